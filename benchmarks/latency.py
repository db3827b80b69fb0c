"""Request latency through Triton at concurrency 1 and N, and the per-stage split.

    python benchmarks/latency.py [--url 127.0.0.1:8001] [--requests 10] [--concurrency 4] [--height 64 ...]

Against a running `wan-triton serve`. Prints JSON: p50/p95 latency per concurrency and, from
Triton's statistics API, each model's mean queue and compute time per request over the run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import tritonclient.grpc as grpcclient

from wan_triton.client import Client
from wan_triton.serving.models import MODELS


def model_times(url: str) -> dict[str, dict[str, float]]:
    stats = grpcclient.InferenceServerClient(url).get_inference_statistics(as_json=True)["model_stats"]
    out = {}
    for model in stats:
        if model["name"] not in MODELS:
            continue
        inference = model["inference_stats"]
        count = int(inference["success"].get("count", 0))
        out[model["name"]] = {
            "count": count,
            **{
                key: int(inference[key].get("ns", 0))
                for key in ("queue", "compute_input", "compute_infer", "compute_output")
            },
        }
    return out


def per_request_ms(before: dict, after: dict) -> dict[str, dict[str, float]]:
    split = {}
    for name, end in after.items():
        start = before.get(name, {"count": 0})
        count = end["count"] - start["count"]
        if count:
            split[name] = {
                key: round((end[key] - start.get(key, 0)) / count / 1e6, 2)
                for key in ("queue", "compute_input", "compute_infer", "compute_output")
            }
    return split


def run(url: str, requests: int, concurrency: int, options: dict) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(count: int) -> None:
        client = Client(url)
        for _ in range(count):
            started = time.perf_counter()
            client.generate("a red cat walking in the snow", **options)
            with lock:
                latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=worker, args=(requests // concurrency,)) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def summary(latencies: list[float], wall: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1e3, 1),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1e3, 1),
        "throughput_per_s": round(len(ordered) / wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--num-frames", type=int, default=17)
    parser.add_argument("--num-inference-steps", type=int, default=8)
    args = parser.parse_args()
    options = {
        "height": args.height,
        "width": args.width,
        "num_frames": args.num_frames,
        "num_inference_steps": args.num_inference_steps,
        "seed": 1,
    }
    Client(args.url).generate("warm-up", **options)
    report = {"options": options}
    for concurrency in (1, args.concurrency):
        before, started = model_times(args.url), time.perf_counter()
        latencies = run(args.url, args.requests, concurrency, options)
        report[f"concurrency_{concurrency}"] = {
            **summary(latencies, time.perf_counter() - started),
            "per_stage_ms": per_request_ms(before, model_times(args.url)),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
