"""A real-shaped run on this CPU: the `--size 1.3b` checkpoint (Wan2.1-1.3B's transformer and VAE
dimensions, random weights) served by `wan-triton serve` and one small clip over gRPC.

    python benchmarks/real_shape.py [--work DIR] [--out benchmarks/results/real_shape_cpu.json]

Reports: the build time, `serve`'s export (time and parity at real dimensions, from the manifests) and
start-up time, the resident memory of every stub, one request's per-stage seconds (the entries'
`wan_stage_duration_seconds`), and how `serve` exited. A benchmark, not a test: minutes and ~10 GB.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REQUEST = {"height": 64, "width": 64, "num_frames": 5, "num_inference_steps": 2, "seed": 1}


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


def stage_seconds(metrics_port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r'wan_stage_duration_seconds_sum\{model="wan_t2v",stage="(\w+)"\} ([\d.e+-]+)', line)
        if match:
            found[match.group(1)] = round(float(match.group(2)), 3)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="keep the checkpoint and repository here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/real_shape_cpu.json"))
    args = parser.parse_args(argv)
    from wan_triton.checkpoints import build_checkpoint
    from wan_triton.client import Client
    from wan_triton.serving.server import Ports, stub_processes

    work = args.work or Path(tempfile.mkdtemp(prefix="wan-real-shape-"))
    checkpoint, repository = work / "wan-1.3b-shaped", work / "model_repository"
    report: dict = {"request": REQUEST}
    started = time.perf_counter()
    if not (checkpoint / "model_index.json").is_file():
        build_checkpoint(checkpoint, size="1.3b")
    report["build_s"] = round(time.perf_counter() - started, 1)
    shutil.rmtree(repository, ignore_errors=True)
    ports = Ports.free()
    command = [sys.executable, "-m", "wan_triton.cli", "serve", "--checkpoint", str(checkpoint)]
    command += ["--repository", str(repository), "--grpc-port", str(ports.grpc)]
    command += ["--http-port", str(ports.http), "--metrics-port", str(ports.metrics), "--log", str(work / "triton.log")]
    log = (work / "serve.log").open("w")
    started = time.perf_counter()
    serve = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    client = Client(f"127.0.0.1:{ports.grpc}")
    try:
        client.wait_ready(1800)
        report["ready_s"] = round(time.perf_counter() - started, 1)
        text = (work / "serve.log").read_text()
        report["exports"] = re.findall(r"(\w+): exported with (\w+) in ([\d.]+) s, scaled error ([\d.e+-]+)", text)
        report["parity"] = {
            part: json.loads((repository / part / "1" / "manifest.json").read_text())["parity"]["cases"]
            for part in ("text_encoder", "vae_decoder", "vae_encoder")
        }
        report["rss_bytes"] = {
            line.split("/model_repository/")[1].split("/")[0] + f" ({pid})": rss_bytes(pid)
            for pid, line in stub_processes(repository).items()
        }
        started = time.perf_counter()
        client.generate("a red cat walking in the snow", **REQUEST)
        report["request_s"] = round(time.perf_counter() - started, 2)
        report["stage_s"] = stage_seconds(ports.metrics)
    finally:
        serve.send_signal(signal.SIGTERM)
        report["exit_code"] = serve.wait(300)
        report["stubs_left"] = len(stub_processes(repository))
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
