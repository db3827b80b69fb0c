"""`train-tiny`: the captioned clips it learns from, the checker that judges generated videos, the training
command itself (a few steps), and the step caches its checkpoint is meant to measure."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from wan_triton.checkpoints import clips
from wan_triton.checkpoints.train import MANIFEST
from wan_triton.contract import Family, GenerationRequest

RED_RIGHT = clips.Caption("circle", "red", "right", "blue")


def test_the_clip_generator_is_seeded_and_shows_every_caption():
    first, captions = clips.dataset(24, seed=3)
    again, _ = clips.dataset(24, seed=3)
    other, _ = clips.dataset(24, seed=4)
    assert first.shape == (24, 17, 64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert len(set(captions)) == 24  # fewer clips than captions: no caption twice
    assert all(c.colour != c.background for c in clips.captions())
    for video, caption in zip(first, captions, strict=True):
        assert clips.shows(video, caption), caption.text


def test_the_checker_tells_the_wrong_direction_colour_and_a_still_picture():
    video = clips.clip(RED_RIGHT, np.random.default_rng(0))
    present, along, across = clips.motion_of(video, RED_RIGHT)
    assert present == 1.0 and 18.0 < along < 30.0 and abs(across) < 0.5  # 1.5 px/frame +-20%, 16 frames
    assert not clips.shows(video, clips.Caption("circle", "red", "left", "blue"))
    assert not clips.shows(video, clips.Caption("circle", "red", "down", "blue"))
    assert not clips.shows(video, clips.Caption("circle", "green", "right", "blue"))
    assert not clips.shows(np.repeat(video[:1], 17, axis=0), RED_RIGHT)
    assert clips.shows(video.astype(np.float32) / 255.0, RED_RIGHT)  # the pipeline's [0, 1] frames too


def test_train_tiny_writes_a_checkpoint_the_pipeline_loads(tmp_path, tiny_checkpoint):
    out = tmp_path / "trained"
    command = [sys.executable, "-m", "wan_triton.cli", "train-tiny", "--out", str(out)]
    options = ["--vae-steps", "3", "--transformer-steps", "3", "--clips", "8", "--vae-batch", "1"]
    options += ["--video-steps", "2", "--video-batch", "1", "--long-steps", "2", "--long-batch", "1"]
    options += ["--decoder-steps", "2"]
    run = subprocess.run([*command, *options], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["recipe"]["vae_steps"] == 3 and manifest["recipe"]["clips"] == 8
    assert manifest["command"].startswith("wan-triton train-tiny --seed 0 ")
    assert set(manifest["final_loss"]) == {"vae", "transformer", "decoder"}
    assert all(np.isfinite(v) for v in manifest["final_loss"].values())
    assert Family.from_checkpoint(out) == Family.from_checkpoint(tiny_checkpoint)  # Wan2.1 T2V's layout
    vae = json.loads((out / "vae" / "config.json").read_text())
    assert len(vae["latents_mean"]) == 16 and all(s > 0 for s in vae["latents_std"])
    tokenizer = json.loads((out / "tokenizer" / "tokenizer.json").read_text())
    assert all(f"▁{w}" in dict(tokenizer["model"]["vocab"]) for w in clips.WORDS)

    before = (out / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    again = subprocess.run([*command, "--decoder-only", "--decoder-steps", "4"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() != before
    assert json.loads((out / MANIFEST).read_text())["recipe"]["decoder_steps"] == 4  # one run's command again

    from wan_triton.pipeline import Pipeline

    request = GenerationRequest(prompt=RED_RIGHT.text, height=64, width=64, num_frames=5, num_inference_steps=2, seed=0)
    assert Pipeline.from_checkpoint(out).frames(request).shape == (5, 64, 64, 3)


def test_every_step_cache_skips_work_and_comes_off_after_the_request(tiny_checkpoint):
    """Each method changes the output (it skipped something), and the next uncached request is bit for bit
    the exact one again: nothing carries over. MagCache runs on ratios calibrated by diffusers here."""
    import torch

    from wan_triton.pipeline import Pipeline
    from wan_triton.pipeline.latents import initial_latents
    from wan_triton.pipeline.step_cache import StepCache, calibrate_mag_ratios

    pipe = Pipeline.from_checkpoint(tiny_checkpoint)
    embeds = torch.from_numpy(pipe.prompt_encoder([RED_RIGHT.text, ""]))
    noise = initial_latents(0, (1, 16, 3, 4, 6), "cpu")
    steps = 12

    def run(cache=None):
        return pipe.denoiser(noise, embeds[:1], embeds[1:], steps, 5.0, cache=cache)

    exact = run()
    ratios = calibrate_mag_ratios(run, pipe.denoiser.transformers(), steps)
    assert len(ratios) == steps and ratios[0] == 1.0 and all(r > 0 for r in ratios)
    assert torch.equal(run(), exact)  # calibration never skips, and came off
    for cache in (
        StepCache("first_block", 1.0),  # thresholds that must skip, even on random weights
        StepCache("mag", 10.0, mag_ratios=tuple(ratios)),
        StepCache("taylorseer", interval=3),
        StepCache("faster", interval=2),
        StepCache("sea", 1.0),
        StepCache("pyramid", interval=3),
    ):
        assert not torch.equal(run(cache), exact), cache.method
        assert not pipe.denoiser.transformer.is_cache_enabled
        assert torch.equal(run(), exact), cache.method
    with pytest.raises(ValueError, match=r"unknown step cache 'warp'; choose from first_block, mag, .*, pyramid"):
        run(StepCache("warp"))
    with pytest.raises(ValueError, match="calibrated ratios"):
        run(StepCache("mag", 0.1))
    assert torch.equal(run(), exact)
