"""The models' Prometheus metrics (serving/metrics.py), scraped from the live server's metrics port
beside Triton's own: they move with the requests that ran, were refused and were cancelled."""

from __future__ import annotations

import re
import time
import urllib.request

import pytest
from conftest import LONG, SMALL

from wan_triton.client import Client, ClientError
from wan_triton.repository import T2V, T2V_STREAM
from wan_triton.serving.metrics import METRICS

LABELS = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """The metrics page as {(name, labels): value} (Prometheus text format)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        text = page.read().decode()
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, labels = head.partition("{")
        samples[(name, frozenset(LABELS.findall(labels)))] = float(value)
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_every_metric_is_exposed_from_the_start(served):
    """Primed at load: dashboards and the HPA see each series before the first request."""
    names = {name for name, _ in scrape(served.metrics)}
    for metric in METRICS:
        exposed = f"{metric.name}_count" if metric.kind == "HISTOGRAM" else metric.name
        if metric.name != "wan_stage_duration_seconds":  # per stage, from its first call
            assert exposed in names, metric.name
    assert "nv_inference_request_success" in names  # Triton's own, on the same port


def test_metrics_count_videos_steps_stages_and_refusals(served):
    before = scrape(served.metrics)
    Client(served.url).generate("a cat", seed=3, **SMALL)
    with pytest.raises(ClientError):
        Client(served.url).generate("a cat", height=40)  # not a multiple of 16: INVALID_ARGUMENT
    after = scrape(served.metrics)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("wan_videos_total", model=T2V) == 1
    assert moved("wan_frames_total", model=T2V) == SMALL["num_frames"]
    assert moved("wan_denoising_steps_total", model="denoiser") == SMALL["num_inference_steps"]
    assert moved("wan_request_duration_seconds_count", model=T2V) == 1
    assert moved("wan_request_duration_seconds_sum", model=T2V) > 0
    for stage in ("text_encoder", "denoiser", "vae_decoder", "video_encoder"):
        assert moved("wan_stage_duration_seconds_count", model=T2V, stage=stage) == 1, stage
    assert moved("wan_requests_rejected_total", model=T2V, reason="invalid_argument") == 1
    assert moved("wan_requests_failed_total", model=T2V) == 0
    assert value(after, "wan_requests_in_flight", model=T2V) == 0
    # Triton counts the refused request as a success too (the model answered it): hence ours.
    # It counts a request when it releases it, which can be just after the client has the answer.
    deadline = time.monotonic() + 10
    while moved("nv_inference_request_success", model=T2V, version="1") < 2:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
        after = scrape(served.metrics)
    assert moved("nv_inference_request_success", model=T2V, version="1") == 2


class Leave(Exception):
    pass


def test_in_flight_while_running_and_a_cancel_counted(served):
    seen = []

    def look_then_leave(progress) -> None:
        seen.append(value(scrape(served.metrics), "wan_requests_in_flight", model=T2V_STREAM))
        raise Leave  # leaving the stream cancels the job on the server

    cancelled = {"name": "wan_requests_cancelled_total", "model": T2V_STREAM, "reason": "cancelled"}
    before = value(scrape(served.metrics), **cancelled)
    with pytest.raises(Leave):
        Client(served.url).generate_stream("long", on_progress=look_then_leave, **LONG)
    assert seen == [1]
    deadline = time.monotonic() + 60  # the denoiser sees the cancel after its current step
    while value(scrape(served.metrics), **cancelled) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    after = scrape(served.metrics)
    assert value(after, **cancelled) == before + 1
    assert value(after, "wan_requests_in_flight", model=T2V_STREAM) == 0
