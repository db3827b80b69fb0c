"""Chaos: mixed loopback clients while model processes are killed and the server restarts once.

    python benchmarks/chaos.py [--checkpoint DIR] [--seconds 300] [--clients 4] [--kills 4] [--out FILE]

Starts `wan-triton serve` (the tiny default checkpoint unless `--checkpoint`, with a small LoRA
allow-list and tight limits), then for `--seconds` runs `--clients` threads that each send, in turn,
plain, streaming, client-cancelled, deadline-bound, invalid, oversize and LoRA requests. Meanwhile
`--kills` random stubs are killed with SIGKILL (serve restarts tritonserver for each) and, halfway,
serve itself is stopped with SIGTERM and started again. Every request must end (a video or a
clean gRPC code) within its own timeout plus `--bound` seconds. Afterwards the server is ready,
then it is stopped: no stub process and no shared-memory region may be left. Resident memory of
the server's processes is compared with the same after warm-up. Prints JSON: outcomes per kind,
the longest time to an answer, leftovers, memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from wan_triton.client import Client, ClientError
from wan_triton.serving.server import Ports, parent, stub_processes

SMALL = {"height": 32, "width": 48, "num_frames": 9, "num_inference_steps": 4}
LONG = {"height": 128, "width": 128, "num_frames": 17, "num_inference_steps": 40}
LIMITS = {"deadline_s": 20.0, "max_queue_size": 4}
TIMEOUT_S = 60.0  # each client request's own deadline


def rss_mib(pid: int) -> float:
    try:
        rows = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0.0
    return next((int(r.split()[1]) / 1024 for r in rows if r.startswith("VmRSS:")), 0.0)


class Serve:
    """`wan-triton serve` as a subprocess on fixed ports."""

    def __init__(self, work: Path, checkpoint: Path | None, loras: Path) -> None:
        self.work, self.ports = work, Ports.free()
        self.repository = work / "model_repository"
        shutil.copytree("model_repository", self.repository, dirs_exist_ok=True)
        (work / "limits.json").write_text(json.dumps(LIMITS))
        self.command = [sys.executable, "-m", "wan_triton.cli", "serve", "--repository", str(self.repository)]
        self.command += ["--grpc-port", str(self.ports.grpc), "--http-port", str(self.ports.http)]
        self.command += ["--metrics-port", str(self.ports.metrics), "--limits", str(work / "limits.json")]
        self.command += ["--loras", str(loras), "--log", str(work / "triton.log")]
        self.command += ["--checkpoint", str(checkpoint)] if checkpoint else []
        self.process: subprocess.Popen | None = None
        self.url = f"127.0.0.1:{self.ports.grpc}"

    def start(self) -> None:
        log = (self.work / "serve.log").open("ab")
        self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        Client(self.url).wait_ready(1800)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(300)

    def memory(self) -> float:
        stubs = stub_processes(self.repository)
        servers = {parent(pid) for pid in stubs}
        return round(sum(rss_mib(pid) for pid in [*stubs, *servers]), 1)


def requests(loras: list[str]):
    """(kind, call) pairs, forever: each call takes a Client and returns what it produced."""
    kinds = [
        ("plain", lambda c: c.generate("chaos plain", **SMALL)),
        ("stream", lambda c: c.generate_stream("chaos stream", **SMALL)),
        ("cancelled", lambda c: c.generate_stream("chaos cancel", on_progress=_leave_after(2), **LONG)),
        ("deadline", lambda c: Client(c.url, timeout_s=1.5, retries=0).generate("chaos deadline", **LONG)),
        ("invalid", lambda c: c.generate("chaos invalid", **{**SMALL, "height": 33})),
        ("oversize", lambda c: c.generate("x" * 100_000, **SMALL)),
        ("lora", lambda c: c.generate("chaos lora", lora_names=loras[:1], **SMALL)),
    ]
    while True:
        yield from kinds


class _Leave(Exception):
    pass


def _leave_after(steps: int):
    def on_progress(progress) -> None:
        if progress.step >= steps:
            raise _Leave

    return on_progress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--bound", type=float, default=120.0, help="seconds past a request's own timeout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="wan-triton-chaos-"))

    from wan_triton.checkpoints import build_checkpoint, build_lora

    checkpoint = args.checkpoint or build_checkpoint(work / "tiny-t2v", seed=0)
    build_lora(checkpoint, work / "loras", seed=1).rename(work / "loras" / "a.safetensors")
    (work / "loras" / "loras.json").write_text(json.dumps({"adapters": {"a": "a.safetensors"}}))
    server = Serve(work, checkpoint, work / "loras" / "loras.json")
    server.start()
    for _ in range(3):  # warm-up before the memory reference
        Client(server.url).generate("warm", **SMALL)
    warm = server.memory()
    regions = set()

    outcomes: dict[str, Counter] = {}
    examples: dict[str, str] = {}  # one message per outcome
    longest = {"seconds": 0.0, "kind": ""}
    hung: list[str] = []
    lock, done = threading.Lock(), threading.Event()

    def client(index: int) -> None:
        source = requests(["a"])
        for _ in range(index):
            next(source)
        while not done.is_set():
            kind, call = next(source)
            started, message = time.monotonic(), ""
            try:
                call(Client(server.url, timeout_s=TIMEOUT_S, retries=0))
                outcome = "video"
            except _Leave:
                outcome = "left (cancelled)"
            except ClientError as exc:
                outcome, message = exc.status or "no status", str(exc)
            except Exception as exc:  # a client-side failure is an outcome too
                outcome, message = type(exc).__name__, str(exc)
            took = time.monotonic() - started
            with lock:
                outcomes.setdefault(kind, Counter())[outcome] += 1
                if outcome not in examples and message:
                    examples[outcome] = message[:200]
                if took > longest["seconds"]:
                    longest.update(seconds=round(took, 2), kind=kind, outcome=outcome)
                if took > TIMEOUT_S + args.bound:
                    hung.append(f"{kind}: {outcome} after {took:.0f} s")
            if outcome in {"UNAVAILABLE", "no status"}:
                time.sleep(0.5)  # the server is restarting: do not spin

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    events = []
    kill_times = sorted(rng.uniform(0.05, 0.9) * args.seconds for _ in range(args.kills))
    restart_at = args.seconds / 2
    while time.monotonic() - started < args.seconds:
        now = time.monotonic() - started
        if kill_times and now >= kill_times[0]:
            kill_times.pop(0)
            stubs = stub_processes(server.repository)
            regions |= {w for line in stubs.values() for w in line.split() if "shm_region" in w}
            if stubs:
                pid, line = rng.choice(sorted(stubs.items()))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                events.append({"at_s": round(now, 1), "killed": line.split()[-2]})
        if restart_at is not None and now >= restart_at:
            restart_at = None
            stubs = stub_processes(server.repository)
            regions |= {w for line in stubs.values() for w in line.split() if "shm_region" in w}
            code = server.stop()
            events.append({"at_s": round(now, 1), "serve restarted": code})
            server.start()
        time.sleep(0.5)
    done.set()
    for thread in threads:
        thread.join(TIMEOUT_S + args.bound)
    alive = [t.name for t in threads if t.is_alive()]
    Client(server.url).wait_ready(1800)
    ready = Client(server.url, retries=0).generate("after chaos", **SMALL).video != b""
    for _ in range(3):
        Client(server.url).generate("settle", **SMALL)
    after = server.memory()
    stubs = stub_processes(server.repository)
    regions |= {w for line in stubs.values() for w in line.split() if "shm_region" in w}
    exit_code = server.stop()
    left = {
        "stubs": sorted(stub_processes(server.repository)),
        "shm_regions": sorted(r for r in regions if (Path("/dev/shm") / r).exists()),
    }
    report = {
        "seconds": args.seconds,
        "clients": args.clients,
        "events": events,
        "outcomes": {kind: dict(counts) for kind, counts in sorted(outcomes.items())},
        "requests": sum(sum(c.values()) for c in outcomes.values()),
        "examples": examples,
        "longest_answer": longest,
        "past_timeout_plus_bound": hung,
        "clients_still_running": alive,
        "ready_after": ready,
        "final_exit_code": exit_code,
        "left_behind": left,
        "memory_mib": {"warm": warm, "after": after, "growth_percent": round(100 * (after - warm) / warm, 2)},
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if exit_code == 0 and not hung and not any(left.values()) and all(e.get("serve restarted", 0) == 0 for e in events):
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"logs kept in {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
