"""wan_t2v_stream against the live server: progress, previews, cancel and errors (R9, R11)."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import LONG, SMALL
from test_cancellation import IDLE_WITHIN_S, next_request_seconds

from wan_triton.client import Client, ClientError


class Enough(Exception):
    pass


def test_stream_reports_every_step_then_the_same_video(served):
    seen = []
    streamed = Client(served.url).generate_stream("a cat", on_progress=seen.append, seed=4, **SMALL)
    assert [(p.step, p.total) for p in seen] == [(i, 4) for i in range(1, 5)]
    assert all(a.elapsed_ms <= b.elapsed_ms for a, b in itertools.pairwise(seen))
    assert all(p.preview is None for p in seen)  # only when asked
    assert streamed.seed == 4 and streamed.video == Client(served.url).generate("a cat", seed=4, **SMALL).video


def test_stream_previews_when_asked(served):
    """A preview frame per step, made in the denoiser without the VAE: each step's first latent frame
    through the linear map fitted to the checkpoint's VAE (pipeline/preview.py), each latent cell
    repeated to the VAE's scale. Each served preview is the in-process projection of that step's
    latents, within one 8-bit level."""
    from wan_triton.contract import PREVIEW_SIDE, validate
    from wan_triton.pipeline import Pipeline, preview
    from wan_triton.pipeline.checkpoint import Checkpoint

    seen = []
    request = {**SMALL, "height": 64, "width": 96}
    Client(served.url).generate_stream("a cat", on_progress=seen.append, seed=4, preview=True, **request)
    assert {p.preview.shape for p in seen} == {(64, 96, 3)} and all(p.preview.dtype == np.uint8 for p in seen)

    projection = preview.fit(Checkpoint.open(served.checkpoint).vae())
    expected = []
    pipeline = Pipeline.from_checkpoint(served.checkpoint)
    pipeline.frames(
        validate({"prompt": "a cat", "seed": 4, **request}, task="t2v"),
        callback=lambda _i, _n, latents: expected.append(projection.frame(latents[0], PREVIEW_SIDE)),
    )
    assert len(expected) == len(seen)
    for got, want in zip(seen, expected, strict=True):
        assert np.abs(got.preview.astype(int) - want.astype(int)).max() <= 1
    assert not np.array_equal(seen[0].preview, seen[-1].preview)  # it follows the denoising


def test_stream_cancel_stops_the_loop_within_a_step(served):
    """R9: the client leaves after 3 steps of 100; the next request is not stuck behind 97."""
    steps = []

    def leave_after_three(progress) -> None:
        steps.append(progress.step)
        if progress.step == 3:
            raise Enough

    with pytest.raises(Enough):
        Client(served.url).generate_stream("long", on_progress=leave_after_three, seed=1, **LONG)
    assert steps == [1, 2, 3]
    assert next_request_seconds(served.url) < IDLE_WITHIN_S


def test_stream_errors_end_the_stream(served):
    """R11: a rejected streaming request ends with its error, at once; the next stream works.
    (Triton's stream messages carry the error text but no status code: the client reads it.)"""
    started = time.perf_counter()
    with pytest.raises(ClientError) as info:
        Client(served.url).generate_stream("a cat", **{**SMALL, "num_frames": 10})
    assert str(info.value).startswith("num_frames: is 10; must be 4k+1")
    assert info.value.status == "INVALID_ARGUMENT"
    assert time.perf_counter() - started < 5
    assert Client(served.url).generate_stream("a cat", **SMALL).video


def test_ctrl_c_in_the_cli_cancels_the_job(served, tmp_path):
    """`wan-triton generate` streams with a progress bar; Ctrl-C (SIGINT) exits 130 and the job
    stops on the server."""
    options = [f"--{k.replace('_', '-')}={v}" for k, v in LONG.items()]
    command = [sys.executable, "-m", "wan_triton.cli", "generate", "long", "-o", str(tmp_path / "v.mp4"), *options]
    # As from a terminal: a suite started in the background (`cmd &` in a script) runs with SIGINT
    # ignored, and a child keeps that, so Ctrl-C would never reach the CLI.
    terminal = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    cli = subprocess.Popen([*command, "--url", served.url], stderr=subprocess.PIPE, text=True, preexec_fn=terminal)
    bar = ""
    while "denoising" not in bar or "/100" not in bar:  # tqdm draws "denoising: ... 3/100"
        char = cli.stderr.read(1)
        assert char, f"the CLI ended before its first step: {bar}"
        bar += char
    cli.send_signal(signal.SIGINT)
    assert cli.wait(30) == 130
    assert "cancelled" in cli.stderr.read()
    assert next_request_seconds(served.url) < IDLE_WITHIN_S
