"""R14/R30: which client behaviour pins a streaming entry so that it never unloads.

    python benchmarks/shutdown.py [--checkpoint DIR] [--cycles 20] [--out results/shutdown.json]

One tritonserver (the tiny default checkpoint unless `--checkpoint`). For each scenario and cycle:
one stream on `wan_t2v_stream` through tritonclient directly (so the client's cancel is the
scenario's), then `unload_model` of that entry (with serve's admin key) and a poll of the
repository index: an entry still loaded or UNLOADING after `--wait` seconds is pinned, which is
what keeps tritonserver from exiting within its exit timeout. A pinned entry costs a server
restart. Prints JSON: pinned / cycles per scenario.
"""

from __future__ import annotations

import argparse
import json
import queue
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from wan_triton.repository import T2V_STREAM
from wan_triton.serving.glue import CHECKPOINT_ENV
from wan_triton.serving.server import GRPC_ADMIN_HEADER, TritonServer, prepare

SMALL = {"height": 32, "width": 48, "num_frames": 9, "num_inference_steps": 4}
LONGER = {"height": 128, "width": 128, "num_frames": 17, "num_inference_steps": 30}


def inputs(prompt: str, **options: int) -> list[grpcclient.InferInput]:
    tensors = []
    values = {"prompt": np.array([[prompt.encode()]], np.object_)}
    values |= {name: np.array([[value]], np.int32) for name, value in options.items()}
    for name, array in values.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "BYTES" if array.dtype == np.object_ else "INT32")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def stream(url: str, tensors, until: int | None, cancel: bool, timeout_s: float | None = None) -> None:
    """One request: read until its final (or `until` responses, or the stream's deadline), then
    close the stream, cancelling its requests when `cancel`."""
    client = grpcclient.InferenceServerClient(url)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)), stream_timeout=timeout_s)
    client.async_stream_infer(T2V_STREAM, tensors, enable_empty_final_response=True)
    seen = 0
    try:
        while until is None or seen < until:
            result, error = answers.get(timeout=60)
            seen += 1
            if error is not None or result.get_response().parameters["triton_final_response"].bool_param:
                break
    except queue.Empty:
        pass
    client.stop_stream(cancel_requests=cancel)
    client.close()


SCENARIOS = {
    "completed": lambda url: stream(url, inputs("done", **SMALL), None, cancel=False),
    "cancel after final": lambda url: stream(url, inputs("done", **SMALL), None, cancel=True),
    "error": lambda url: stream(url, inputs("bad", **{**SMALL, "height": 33}), None, cancel=False),
    "cancel after error": lambda url: stream(url, inputs("bad", **{**SMALL, "height": 33}), None, cancel=True),
    "cancel mid-stream": lambda url: stream(url, inputs("long", **LONGER), 3, cancel=True),
    "deadline mid-stream": lambda url: stream(url, inputs("long", **LONGER), None, cancel=False, timeout_s=1.0),
}


def state(client: grpcclient.InferenceServerClient, key: str) -> str:
    index = client.get_model_repository_index(headers={GRPC_ADMIN_HEADER: key}, as_json=True)
    found = [m for m in index.get("models", []) if m["name"] == T2V_STREAM]
    return found[0].get("state", "") if found else ""


def pinned(server: TritonServer, wait_s: float) -> bool:
    """Unload the streaming entry; True when it is still not unloaded after `wait_s`."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.unload_model(T2V_STREAM, headers={GRPC_ADMIN_HEADER: server.key})
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if state(client, server.key) == "UNAVAILABLE":
            client.load_model(T2V_STREAM, headers={GRPC_ADMIN_HEADER: server.key})
            return False
        time.sleep(0.2)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--repository", type=Path, default=Path("out/shutdown/model_repository"))
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--wait", type=float, default=10.0)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import shutil

    shutil.copytree("model_repository", args.repository, dirs_exist_ok=True)
    checkpoint = prepare(args.repository, args.checkpoint, log=lambda _: None)
    env = {CHECKPOINT_ENV: str(checkpoint)}
    results: dict[str, dict[str, int]] = {}
    server = TritonServer(args.repository, env=env, log=args.repository.parent / "triton.log").start()
    try:
        for name in args.scenarios.split(","):
            count = results.setdefault(name, {"pinned": 0, "cycles": 0})
            for _ in range(args.cycles):
                SCENARIOS[name](server.grpc_url)
                time.sleep(0.5)  # the server's side of the stream settles
                count["cycles"] += 1
                if pinned(server, args.wait):
                    count["pinned"] += 1
                    server.close()  # pinned for good: a fresh server for the next cycle
                    server = TritonServer(args.repository, env=env, log=args.repository.parent / "triton.log").start()
            print(name, count, flush=True)
    finally:
        server.close()
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
