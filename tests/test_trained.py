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
SHOWN_OPTIONS = {"height": 64, "width": 64, "num_frames": 17, "num_inference_steps": 20, "seed": 0}


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


@pytest.fixture(scope="module")
def served_default(tmp_path_factory):
    """`wan-triton serve` with no --checkpoint: it exports the committed checkpoint and serves it (what
    `make demo` does); stopped as every server is, drained with exit 0 and no stub left."""
    served = serve(None, None, tmp_path_factory.mktemp("trained"))
    yield served
    stop(served)


def test_serve_without_a_checkpoint_serves_the_trained_one(served_default, pipeline):
    """The embedded default end to end. Over gRPC a prompt of its grammar comes back as in process (ONNX
    text encoder and VAE against torch) and showing its prompt; `mag` is served, because the checkpoint
    carries its ratios, and comes off after the request."""
    client = Client(served_default.url)
    result = client.generate(SHOWN.text, frames=True, **SHOWN_OPTIONS)
    expected = pipeline.frames(GenerationRequest(prompt=SHOWN.text, **SHOWN_OPTIONS))
    assert np.abs(result.frames.astype(int) - np.round(expected * 255).astype(int)).max() <= 2
    assert clips.shows(result.frames, SHOWN), clips.motion_of(result.frames, SHOWN)
    assert (TRAINED / MAG_RATIOS).is_file()
    cached = client.generate(SHOWN.text, frames=True, cache_method="mag", cache_threshold=0.24, **SHOWN_OPTIONS)
    assert not np.array_equal(cached.frames, result.frames)
    faster = client.generate(SHOWN.text, frames=True, cache_method="faster", **SHOWN_OPTIONS)
    assert not np.array_equal(faster.frames, result.frames) and clips.shows(faster.frames, SHOWN)
    assert client.generate(SHOWN.text, **SHOWN_OPTIONS).video == result.video


def test_serve_quantize_int8_serves_a_compiled_int8_transformer(served_default, pipeline, tmp_path):
    """`serve --quantize int8` (torchao W8A8 on the transformer's blocks, compiled, warmed at load; the
    default's exports reused): the video still shows its prompt and stays near the exact one,
    other sizes need no new warm-up, and a step cache, which a compiled transformer cannot take, is
    INVALID_ARGUMENT naming `cache_method` before any stage."""
    from wan_triton.benchmarks.speed_options import luma_psnr
    from wan_triton.client import ClientError

    served = serve(None, served_default.repository, tmp_path, extra=("--quantize", "int8"))
    try:
        client = Client(served.url)
        result = client.generate(SHOWN.text, frames=True, **SHOWN_OPTIONS)
        exact = pipeline.frames(GenerationRequest(prompt=SHOWN.text, **SHOWN_OPTIONS))
        assert not np.array_equal(result.frames, np.round(exact * 255).astype(np.uint8))  # quantized
        # W8A8 rounds activations per token, which amplifies the exported text encoder's ~1e-6 differences
        # over 20 guided steps: measured 24.3 dB here (33.8 dB in process on torch's text encoder).
        assert luma_psnr(result.frames / 255.0, exact) >= 20.0
        assert clips.shows(result.frames, SHOWN), clips.motion_of(result.frames, SHOWN)
        other = client.generate(SHOWN.text, frames=True, **{**SHOWN_OPTIONS, "width": 48, "num_frames": 9})
        assert other.frames.shape == (9, 64, 48, 3)
        with pytest.raises(ClientError) as refused:
            client.generate(SHOWN.text, cache_method="first_block", **SHOWN_OPTIONS)
        assert refused.value.status == "INVALID_ARGUMENT" and "cache_method" in str(refused.value)
        assert "compiled transformer (serve: quantize=int8)" in str(refused.value)
        log = (tmp_path / "triton.log").read_text()
        assert log.count("torch._dynamo hit config.recompile_limit") == 0
    finally:
        stop(served)


def test_serve_gguf_serves_the_trained_transformer_at_q8_0(served_default, pipeline, tmp_path):
    """`wan-triton gguf` writes the trained transformer at Q8_0 in Wan's original names; in process its
    video stays near the exact one; `serve --gguf` (the default's exports reused) serves that video over
    gRPC, showing its prompt."""
    import dataclasses
    import subprocess
    import sys

    from wan_triton.benchmarks.speed_options import luma_psnr
    from wan_triton.pipeline.checkpoint import Checkpoint
    from wan_triton.pipeline.denoise import Denoiser

    file = tmp_path / "transformer-Q8_0.gguf"
    command = [sys.executable, "-m", "wan_triton.cli", "gguf", "--checkpoint", str(TRAINED), "--out", str(file)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "tensors Q8_0" in done.stdout, done.stderr[-2000:]
    request = GenerationRequest(prompt=SHOWN.text, **SHOWN_OPTIONS)
    quantized = Denoiser.from_checkpoint(Checkpoint.open(TRAINED), gguf={"transformer": file})
    frames = dataclasses.replace(pipeline, denoiser=quantized).frames(request)
    # Measured 30.3 dB (F16: 46.9 dB): every quantized matrix's ~0.5% rounding adds up over 20 guided steps
    # of this small, sensitive checkpoint (the blocks' matrices alone: 37.4 dB).
    assert luma_psnr(frames, pipeline.frames(request)) >= 25.0
    served = serve(None, served_default.repository, tmp_path / "served", extra=("--gguf", str(file)))
    try:
        result = Client(served.url).generate(SHOWN.text, frames=True, **SHOWN_OPTIONS)
    finally:
        stop(served)
    assert np.abs(result.frames.astype(int) - np.round(frames * 255).astype(int)).max() <= 2
    assert clips.shows(result.frames, SHOWN), clips.motion_of(result.frames, SHOWN)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--quantize", "fp8"), "--quantize fp8 needs a GPU with float8"),
        (("--compile", "--parallel", "ulysses=2"), "--compile does not combine with --parallel"),
    ],
)
def test_serve_refuses_what_a_compiled_transformer_cannot_run_before_starting(flags, message, tmp_path):
    import subprocess
    import sys

    import torch

    if "fp8" in flags and torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9):
        pytest.skip("this GPU has float8: fp8 is served here (tests/test_gpu.py)")
    command = [sys.executable, "-m", "wan_triton.cli", "serve", "--repository", str(tmp_path / "r"), *flags]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "r").exists()  # refused before anything was built
