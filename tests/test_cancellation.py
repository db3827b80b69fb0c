"""Cancellation against the live server: client deadlines and requests cancelled while queued."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import LONG, SMALL

from wan_triton.client import Client, ClientError

IDLE_WITHIN_S = 3.0  # R9: idle again within 2 s; plus the small request's own time


def next_request_seconds(url: str) -> float:
    started = time.perf_counter()
    Client(url).generate("after", seed=5, **SMALL)
    return time.perf_counter() - started


def test_deadline_cancels_the_job_on_the_server(served):
    """R9: a client timeout 1 s into a 100-step job; the next request is not stuck behind it."""
    with pytest.raises(ClientError) as info:
        Client(served.url, timeout_s=1.0).generate("long", seed=1, **LONG)
    assert info.value.status == "DEADLINE_EXCEEDED"
    time.sleep(0.5)  # the denoiser sees the flag after its current step
    assert next_request_seconds(served.url) < IDLE_WITHIN_S


def test_cancelled_while_queued_never_runs(served):
    """R10: B times out while queued behind A; once A is done, nothing of B runs."""
    finished = {}

    def first() -> None:
        finished["a"] = Client(served.url).generate("A", seed=1, **{**LONG, "num_inference_steps": 30})

    thread = threading.Thread(target=first)
    thread.start()
    time.sleep(1.0)  # A is past the text encoder and holds the denoiser
    with pytest.raises(ClientError) as info:
        Client(served.url, timeout_s=1.0).generate("B", seed=2, **LONG)
    assert info.value.status == "DEADLINE_EXCEEDED"
    thread.join(300)
    assert finished["a"].video
    assert next_request_seconds(served.url) < IDLE_WITHIN_S  # B (100 steps) would take seconds
