"""AIPerf against the OpenAI Videos API (`wan-triton api`): its `video_generation` endpoint submits a
job, polls it and downloads the MP4, as a user's tool would. Bounded (a handful of requests), it writes
benchmarks/results/aiperf.json, which `make bench` renders into docs/PERFORMANCE.md.

    wan-triton serve --api-port 8080 &                     # the embedded default, or --checkpoint DIR
    benchmarks/install_aiperf.sh /tmp/aiperf               # its own venv
    python -m wan_triton.benchmarks.aiperf --aiperf /tmp/aiperf/bin/aiperf --api http://127.0.0.1:8080

AIPerf counts prompt tokens with a tokenizer it loads by hub id, and with HF_HUB_OFFLINE=1 (no hub
here) it resolves every name through the hub cache, a local folder included. So the checkpoint's own
tokenizer (the one its text encoder reads) is placed in a private hub cache under a made-up id.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "aiperf.json"
TOKENIZER_ID = "wan-triton/checkpoint-tokenizer"
PROMPTS = ("a red cat walking in the snow", "a blue square moving left on a white background")


def hub_cache(tokenizer: Path, root: Path) -> Path:
    """`root` as HF_HOME with `tokenizer`'s files as the snapshot of TOKENIZER_ID."""
    repo = root / "hub" / f"models--{TOKENIZER_ID.replace('/', '--')}"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(tokenizer, repo / "snapshots" / revision)
    return root


def run(aiperf: str, api: str, tokenizer: Path, model: str, requests: int, concurrency: int, inputs: dict) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        prompts = work / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"text": text}) + "\n" for text in PROMPTS))
        command = [aiperf, "profile", "-m", model, "--endpoint-type", "video_generation", "-u", api]
        command += ["--input-file", str(prompts), "--custom-dataset-type", "single_turn"]
        command += ["--request-count", str(requests), "--concurrency", str(concurrency), "--download-video-content"]
        command += ["--tokenizer", TOKENIZER_ID, "--artifact-dir", str(work / "out"), "--ui-type", "none"]
        for name, value in inputs.items():
            command += ["--extra-inputs", f"{name}:{value}"]
        env = {**os.environ, "HF_HOME": str(hub_cache(tokenizer, work / "hf")), "HF_HUB_OFFLINE": "1"}
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"aiperf exited with {done.returncode}: {done.stdout[-3000:]}{done.stderr[-3000:]}")
        report = json.loads((work / "out" / "profile_export_aiperf.json").read_text())
    stats = lambda key: {k: round(report[key][k], 1) for k in ("avg", "p50", "p90", "p99", "min", "max")}  # noqa: E731
    return {
        "aiperf": report["aiperf_version"],
        "command": " ".join(command[:1] + [c if "/" not in c or c == TOKENIZER_ID else "..." for c in command[1:]]),
        "request": {"model": model, **inputs},
        "requests": int(report["request_count"]["avg"]),
        "concurrency": concurrency,
        "errors": round(report["request_error_rate"]["avg"] * report["request_count"]["avg"] / 100),
        "error_rate_percent": report["request_error_rate"]["avg"],
        "throughput_per_s": round(report["request_throughput"]["avg"], 3),
        "request_latency_ms": stats("request_latency"),
        "video_inference_time_ms": stats("video_inference_time"),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    command = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    command.add_argument("--aiperf", default=shutil.which("aiperf") or "aiperf", help="the aiperf executable")
    command.add_argument("--api", default="http://127.0.0.1:8080", help="the API's base URL (wan-triton api)")
    default_tokenizer = Path(os.environ.get("WAN_TRITON_CACHE", Path.home() / ".cache" / "wan-triton"))
    command.add_argument(
        "--tokenizer",
        type=Path,
        default=default_tokenizer / "tiny-t2v" / "tokenizer",
        help="the served checkpoint's tokenizer folder (default: the embedded default's)",
    )
    command.add_argument("--model", default="wan_t2v")
    command.add_argument("--requests", type=int, default=8)
    command.add_argument("--concurrency", type=int, default=2)
    command.add_argument("--size", default="96x64")
    command.add_argument("--num-frames", type=int, default=17)
    command.add_argument("--steps", type=int, default=8)
    command.add_argument("--out", type=Path, default=RESULTS)
    args = command.parse_args(argv)
    inputs = {"size": args.size, "num_frames": args.num_frames, "num_inference_steps": args.steps, "seed": 7}
    result = run(args.aiperf, args.api, args.tokenizer, args.model, args.requests, args.concurrency, inputs)
    result["machine"] = f"{os.cpu_count()} CPU cores"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
