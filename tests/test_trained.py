"""The committed trained checkpoint (`train-tiny`, wan_triton/checkpoints/trained/): what its weights do in
process, its step caches against its exact output, and `serve`'s embedded default over gRPC."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import serve, stop

from wan_triton.checkpoints import clips
from wan_triton.checkpoints.train import MANIFEST, TRAINED, prompt_accuracy, vae_psnr
from wan_triton.client import Client
from wan_triton.contract import CACHE_METHODS, MAG_RATIOS, GenerationRequest, validate

SHOWN = clips.Caption("square", "blue", "down", "white")  # seed 0 shows it (20 steps), as make demo's prompt may not


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((TRAINED / MANIFEST).read_text())


@pytest.fixture(scope="module")
def pipeline():
    from wan_triton.pipeline import Pipeline

    return Pipeline.from_checkpoint(TRAINED)


def test_the_committed_checkpoint_reconstructs_clips_it_never_saw(manifest):
    psnr = vae_psnr(TRAINED, count=4)
    assert psnr >= 26.0  # 27.4 dB over the manifest's 16 clips
    assert abs(psnr - manifest["vae_psnr_db"]) < 2.0


def test_the_committed_checkpoint_shows_its_prompts_as_its_manifest_says(manifest):
    """All 64 videos of the manifest's check (32 captions x 2 seeds), judged by `clips.shows`: these
    weights give the share recorded beside them (a video on the checker's edge may flip with the
    arithmetic of another machine), far above a random checkpoint's 0."""
    accuracy = prompt_accuracy(TRAINED, seeds=2)
    assert accuracy["share"] >= 0.25, accuracy
    assert abs(accuracy["share"] - manifest["prompt_accuracy"]["share"]) <= 0.05, accuracy


def test_every_step_cache_at_its_default_stays_within_30_db_of_the_exact_video(pipeline):
    """Quality, not time: each method at the contract's default parameter, on 30 steps, decoded, against
    the exact video of the same noise (luma PSNR), with the committed MagCache ratios."""
    from wan_triton.benchmarks.speed_options import SPEED_REQUEST, luma_psnr

    assert pipeline.mag_ratios and len(pipeline.mag_ratios) == 30  # mag_ratios.json, read at load
    exact = pipeline.frames(SPEED_REQUEST)
    for method in (m for m in CACHE_METHODS if m != "none"):
        request = validate({"prompt": SPEED_REQUEST.prompt, "cache_method": method, **_sized(SPEED_REQUEST)})
        cached = pipeline.frames(request)
        assert not np.array_equal(cached, exact), method  # it skipped work
        assert luma_psnr(cached, exact) >= 30.0, method
    assert np.array_equal(pipeline.frames(SPEED_REQUEST), exact)  # and came off


def _sized(request: GenerationRequest) -> dict:
    names = ("height", "width", "num_frames", "num_inference_steps", "seed")
    return {name: getattr(request, name) for name in names}


def test_serve_without_a_checkpoint_serves_the_trained_one(tmp_path, pipeline):
    """The embedded default end to end: `wan-triton serve` with no --checkpoint exports the committed
    checkpoint and serves it (what `make demo` does). Over gRPC a prompt of its grammar comes back as in
    process (ONNX text encoder and VAE against torch) and showing its prompt; `mag` is served, because
    the checkpoint carries its ratios, and comes off after the request."""
    served = serve(None, None, tmp_path)
    try:
        client = Client(served.url)
        options = {"height": 64, "width": 64, "num_frames": 17, "num_inference_steps": 20, "seed": 0}
        result = client.generate(SHOWN.text, frames=True, **options)
        expected = pipeline.frames(GenerationRequest(prompt=SHOWN.text, **options))
        assert np.abs(result.frames.astype(int) - np.round(expected * 255).astype(int)).max() <= 2
        assert clips.shows(result.frames, SHOWN), clips.motion_of(result.frames, SHOWN)
        assert (TRAINED / MAG_RATIOS).is_file()
        cached = client.generate(SHOWN.text, frames=True, cache_method="mag", cache_threshold=0.24, **options)
        assert not np.array_equal(cached.frames, result.frames)
        assert client.generate(SHOWN.text, **options).video == result.video
    finally:
        stop(served)
