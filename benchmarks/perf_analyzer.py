"""perf_analyzer (NVIDIA's load generator) against the entries over gRPC, installed by
benchmarks/install_perf_analyzer.sh: throughput, p50/p95/p99 and the queue/compute split."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import tempfile
from pathlib import Path

from wan_triton.repository import T2V, T2V_STREAM

INSTALLER = Path(__file__).with_name("install_perf_analyzer.sh")


def install(folder: Path) -> Path:
    done = subprocess.run(["bash", str(INSTALLER), str(folder)], check=True, capture_output=True, text=True)
    return Path(done.stdout.strip().splitlines()[-1])


def measure(binary: Path, url: str, options: dict, levels=(1, 2, 4), requests: int = 6) -> dict:
    """Both entries at each concurrency; only what differs from the defaults goes in the data."""
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data.json"
        data.write_text(json.dumps({"data": [{"prompt": ["a red cat"], **{k: [v] for k, v in options.items()}}]}))
        env = {**os.environ, "LD_LIBRARY_PATH": f"{binary.parent.parent / 'nvidia/cuda_runtime/lib'}"}
        for model, streaming in ((T2V, False), (T2V_STREAM, True)):
            out = Path(folder) / f"{model}.csv"
            command = [
                str(binary),  # short options take their value apart: "-m=x" would name model "=x"
                "-m",
                model,
                "-u",
                url,
                "-i",
                "grpc",
                f"--input-data={data}",
                f"--concurrency-range={levels[0]}:{levels[-1]}",
                "--measurement-mode=count_windows",
                f"--measurement-request-count={requests}",
                # Three windows per level, whatever their spread: these are minutes-long runs on a
                # shared machine, where perf_analyzer's stability rule would refuse to report.
                "--max-trials=3",
                "--stability-percentage=999",
                "-f",
                str(out),
                *(["--streaming"] if streaming else []),
            ]
            subprocess.run(command, check=True, capture_output=True, text=True, env=env, timeout=900)
            rows[model] = [_row(line) for line in csv.DictReader(out.open()) if int(line["Concurrency"]) in levels]
    return rows


def _row(line: dict) -> dict:
    us = lambda key: round(int(line[key]) / 1e3, 1)  # noqa: E731
    return {
        "concurrency": int(line["Concurrency"]),
        "infer_per_s": float(line["Inferences/Second"]),
        "p50_ms": us("p50 latency"),
        "p95_ms": us("p95 latency"),
        "p99_ms": us("p99 latency"),
        "server_queue_ms": us("Server Queue"),
        "server_compute_ms": round(sum(int(line[k]) for k in line if k.startswith("Server Compute")) / 1e3, 1),
    }
