"""Benchmarks through a real tritonserver over gRPC: the serving overhead against diffusers
in-process, the per-stage split, and how latency scales with the request."""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import time

import torch

from wan_triton.benchmarks.latency import model_times, per_request_ms, run, summary
from wan_triton.benchmarks.timing import ratio, timed
from wan_triton.client import Client
from wan_triton.contract import GenerationRequest

OPTION_NAMES = ("height", "width", "num_frames", "num_inference_steps", "guidance_scale", "negative_prompt", "seed")


def options(request: GenerationRequest) -> dict:
    return {name: getattr(request, name) for name in OPTION_NAMES}


def overhead(url: str, checkpoint, request: GenerationRequest, repeats: int = 5) -> dict:
    """End to end through Triton (gRPC, entry, four stage models, MP4) vs diffusers' WanPipeline
    called in this process plus the same MP4 encode: alternating, same inputs and seed."""
    from diffusers import WanPipeline

    from wan_triton.pipeline.reference import diffusers_frames
    from wan_triton.video import encode_mp4, to_uint8

    pipe = WanPipeline.from_pretrained(checkpoint)
    client = Client(url)

    def direct() -> None:
        encode_mp4(to_uint8(diffusers_frames(pipe, request)), request.fps)

    def served() -> None:
        client.generate(request.prompt, **options(request))

    direct(), served()  # warm-up
    before = model_times(url)
    rows: dict[str, list[float]] = {"triton": [], "diffusers": []}
    for _ in range(repeats):  # alternate: drift on a shared machine hits both alike
        for name, fn in (("triton", served), ("diffusers", direct)):
            rows[name].append(timed(fn, repeats=1, warmup=0)["median_ms"])
    stats = {name: {"median_ms": round(statistics.median(ms), 1), "runs_ms": ms} for name, ms in rows.items()}
    return {
        **stats,
        "triton_over_diffusers": ratio(stats["triton"], stats["diffusers"]),
        "per_stage_ms": per_request_ms(before, model_times(url)),
        "torch_threads_here": torch.get_num_threads(),
    }


def steps(url: str, request: GenerationRequest) -> dict:
    """Milliseconds per denoising step as the streaming entry reports them."""
    seen = []
    Client(url).generate_stream(request.prompt, on_progress=seen.append, **options(request))
    gaps = [b.elapsed_ms - a.elapsed_ms for a, b in itertools.pairwise(seen)]
    return {"first_step_ms": round(seen[0].elapsed_ms, 1), "median_step_ms": round(statistics.median(gaps), 1)}


def scaling(url: str, base: GenerationRequest, repeats: int = 2) -> dict:
    """Median latency while one knob moves (the others at `base`), and throughput by concurrency."""
    knobs = {
        "num_frames": [5, 9, 17, 33],
        "num_inference_steps": [2, 4, 8, 16],
        "side": [64, 96, 128, 192],  # square frames
    }
    client, rows = Client(url), {}
    for knob, values in knobs.items():
        points = []
        for value in values:
            changed = {"height": value, "width": value} if knob == "side" else {knob: value}
            request = dataclasses.replace(base, **changed)
            points.append({"value": value, **timed(lambda r=request: client.generate(r.prompt, **options(r)), repeats)})
        rows[knob] = points
    rows["concurrency"] = throughput(url, base, (1, 2, 4))
    return rows


def throughput(url: str, request: GenerationRequest, levels=(1, 4), per_client: int = 4) -> list[dict]:
    """Videos per second and latency with `level` clients sending the same request."""
    rows = []
    for level in levels:
        started = time.perf_counter()
        latencies = run(url, per_client * level, level, options(request))
        rows.append({"concurrency": level, **summary(latencies, time.perf_counter() - started)})
    return rows
