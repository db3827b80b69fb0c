"""Issue 14, item 5: would async `execute` suit the entries? Measured on this tritonserver.

    python benchmarks/async_entries.py [--clients 8] [--job-s 2] [--out results/async_entries.json]

Two decoupled Python models shaped like a streaming entry (one instance, max_batch_size 1, a
dynamic-batching queue of 2, as `serve --limits` sizes the entries' queues): `sync_entry` runs each
job inside `execute`, `async_entry` is `async def execute` (python_backend "Decoupled Async
Execute", 24.04+), each job awaiting `--job-s` seconds as an entry awaits its stages. `--clients`
streams at once on each. Reported per model: accepted and refused requests, the most jobs one stub
ran at the same time, the wall time, and the stub's RSS.
"""

from __future__ import annotations

import argparse
import json
import queue
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from wan_triton.serving.server import TritonServer, stub_processes

CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 1
input {{ name: "JOB" data_type: TYPE_INT32 dims: 1 }}
output {{ name: "RUNNING" data_type: TYPE_INT32 dims: 1 }}
instance_group {{ count: 1 kind: KIND_CPU }}
model_transaction_policy {{ decoupled: true }}
dynamic_batching {{ default_queue_policy {{ max_queue_size: 2 }} }}
parameters {{ key: "job_s" value {{ string_value: "{job_s}" }} }}
"""

MODEL = """
import asyncio, json, threading, time
import numpy as np
import triton_python_backend_utils as pb_utils

RUNNING = [0]
LOCK = threading.Lock()


def finish(request, running):
    sender = request.get_response_sender()
    out = pb_utils.Tensor("RUNNING", np.array([[running]], np.int32))
    sender.send(pb_utils.InferenceResponse([out]), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


class TritonPythonModel:
    def initialize(self, args):
        self.job_s = float(json.loads(args["model_config"])["parameters"]["job_s"]["string_value"])
"""

SYNC = """
    def execute(self, requests):
        for request in requests:
            with LOCK:
                RUNNING[0] += 1
                running = RUNNING[0]
            time.sleep(self.job_s)
            with LOCK:
                RUNNING[0] -= 1
            finish(request, running)
        return None
"""

ASYNC = """
    async def execute(self, requests):
        for request in requests:
            RUNNING[0] += 1
            running = RUNNING[0]
            await asyncio.sleep(self.job_s)
            RUNNING[0] -= 1
            finish(request, running)
        return None
"""


def write_repository(root: Path, job_s: float) -> list[str]:
    for name, body in (("sync_entry", SYNC), ("async_entry", ASYNC)):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(CONFIG.format(name=name, job_s=job_s))
        (root / name / "1" / "model.py").write_text(textwrap.dedent(MODEL) + body)
    return ["sync_entry", "async_entry"]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def burst(url: str, model: str, clients: int) -> dict:
    """`clients` streams at once, each on its own connection; what each got back."""
    outcomes: list[tuple[str, int]] = []

    def one(job: int) -> None:
        client, answers = grpcclient.InferenceServerClient(url), queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        value = grpcclient.InferInput("JOB", [1, 1], "INT32")
        value.set_data_from_numpy(np.array([[job]], np.int32))
        client.async_stream_infer(model, [value], enable_empty_final_response=True)
        result, error = answers.get(timeout=120)
        client.stop_stream()
        if error is not None:
            outcomes.append(("refused" if "queue" in str(error).lower() else f"error: {error}", 0))
        else:
            outcomes.append(("done", int(result.as_numpy("RUNNING")[0, 0])))

    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(job,)) for job in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "accepted": sum(kind == "done" for kind, _ in outcomes),
        "refused": sum(kind == "refused" for kind, _ in outcomes),
        "errors": [kind for kind, _ in outcomes if kind.startswith("error")],
        "most_jobs_at_once": max((running for _, running in outcomes), default=0),
        "wall_s": round(time.perf_counter() - started, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--job-s", type=float, default=2.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        repository = Path(folder)
        models = write_repository(repository, args.job_s)
        with TritonServer(repository, models=models, log=repository / "triton.log") as server:
            stubs = stub_processes(repository)
            report = {"clients": args.clients, "job_s": args.job_s, "max_queue_size": 2, "instances": 1}
            for model in models:
                (pid,) = [pid for pid, line in stubs.items() if f"/{model}/" in line]
                report[model] = {**burst(server.grpc_url, model, args.clients), "stub_rss_mib": round(rss_mib(pid))}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
