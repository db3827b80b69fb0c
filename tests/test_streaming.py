"""Progress and cancellation against the live server: wan_t2v_stream, deadlines, queued requests."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from wan_triton.client import Client, ClientError

SMALL = {"height": 32, "width": 48, "num_frames": 9, "num_inference_steps": 4, "negative_prompt": "blurry"}
# Long enough that finishing it would take seconds more than a cancel allows (measured here:
# 80-170 ms a step on 2 cores).
LONG = {"height": 256, "width": 256, "num_frames": 33, "num_inference_steps": 100}
IDLE_WITHIN_S = 3.0  # R9: idle again within 2 s; plus the small request's own time


class Enough(Exception):
    pass


def next_request_seconds(url: str) -> float:
    started = time.perf_counter()
    Client(url).generate("after", seed=5, **SMALL)
    return time.perf_counter() - started


def test_stream_reports_every_step_then_the_same_video(served):
    seen = []
    streamed = Client(served.url).generate_stream("a cat", on_progress=seen.append, seed=4, **SMALL)
    assert [(p.step, p.total) for p in seen] == [(i, 4) for i in range(1, 5)]
    assert all(a.elapsed_ms <= b.elapsed_ms for a, b in itertools.pairwise(seen))
    assert streamed.seed == 4 and streamed.video == Client(served.url).generate("a cat", seed=4, **SMALL).video


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


def test_deadline_cancels_a_plain_request(served):
    """R9 for wan_t2v: a client timeout cancels the request on the server too."""
    with pytest.raises(ClientError) as info:
        Client(served.url, timeout_s=1.0).generate("long", seed=1, **LONG)
    assert info.value.status == "DEADLINE_EXCEEDED"
    time.sleep(0.5)  # the denoiser sees the flag after its current step
    assert next_request_seconds(served.url) < IDLE_WITHIN_S


def test_cancelled_while_queued_never_runs(served):
    """R10: B times out while queued behind A; once A is done, nothing of B runs."""
    started, finished = threading.Event(), {}

    def first() -> None:
        finished["a"] = Client(served.url).generate_stream(
            "A", on_progress=lambda _: started.set(), seed=1, **{**LONG, "num_inference_steps": 30}
        )

    thread = threading.Thread(target=first)
    thread.start()
    assert started.wait(120)
    with pytest.raises(ClientError) as info:
        Client(served.url, timeout_s=1.0).generate("B", seed=2, **LONG)
    assert info.value.status == "DEADLINE_EXCEEDED"
    thread.join(300)
    assert finished["a"].video
    assert next_request_seconds(served.url) < IDLE_WITHIN_S  # B (100 steps) would take seconds


def test_stream_errors_end_the_stream(served):
    """R11: a rejected streaming request ends with its error, at once; the next stream works.
    (Triton's stream messages carry the error text but no status code.)"""
    started = time.perf_counter()
    with pytest.raises(ClientError) as info:
        Client(served.url).generate_stream("a cat", **{**SMALL, "num_frames": 10})
    assert str(info.value).startswith("num_frames: is 10; must be 4k+1")
    assert time.perf_counter() - started < 5
    assert Client(served.url).generate_stream("a cat", **SMALL).video
