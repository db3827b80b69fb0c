"""R14/R30: which client behaviour pins a streaming entry so that it never unloads.

    python benchmarks/shutdown.py [--checkpoint DIR] [--cycles 20] [--out results/shutdown.json]

One tritonserver (the tiny default checkpoint unless `--checkpoint`). For each scenario and cycle:
one stream on `wan_t2v_stream` through tritonclient directly (so the client's cancel is the
scenario's), then `unload_model` of that entry (with serve's admin key) and a poll of the
repository index: an entry still loaded or UNLOADING after `--wait` seconds is pinned, which is
what keeps tritonserver from exiting within its exit timeout. A pinned entry costs a server
restart. Prints JSON: pinned / cycles per scenario.

    python benchmarks/shutdown.py --sigterm --cycles 50

R30 itself: each cycle starts the streaming entry and its stages, sends our own client's mix (a
completed stream, one the client leaves after 2 steps, one whose deadline passes mid-loop, one
refused as invalid, a completed one), then stops it as `serve` does (drain, SIGTERM) and records
tritonserver's exit code and the time it took.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from wan_triton.repository import T2V_STREAM
from wan_triton.serving.server import GRPC_ADMIN_HEADER, TritonServer, prepare
from wan_triton.serving.settings import ServeSettings

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


def our_mix(url: str) -> None:
    """The stream endings R30 names, through the project's own client."""
    from wan_triton.client import Client, ClientError

    class Leave(Exception):
        pass

    def leave_at_two(progress) -> None:
        if progress.step == 2:
            raise Leave

    client = Client(url, retries=0)
    client.generate_stream("done", **SMALL)
    with contextlib.suppress(Leave):
        client.generate_stream("left", on_progress=leave_at_two, **LONGER)
    for prompt, options, timeout_s in (("late", LONGER, 1.0), ("bad", {**SMALL, "height": 33}, 60.0)):
        with contextlib.suppress(ClientError):
            Client(url, retries=0, timeout_s=timeout_s).generate_stream(prompt, **options)
    client.generate_stream("done again", **SMALL)


def sigterm_cycles(repository: Path, settings: ServeSettings, cycles: int) -> dict:
    from wan_triton.repository import DENOISER, TEXT_ENCODER, VAE_DECODER, VIDEO_ENCODER

    models = [T2V_STREAM, TEXT_ENCODER, DENOISER, VAE_DECODER, VIDEO_ENCODER]  # what a T2V stream uses
    codes, seconds = [], []
    for cycle in range(cycles):
        server = TritonServer(
            repository, settings=settings, models=models, log=repository.parent / "triton.log"
        ).start()
        try:
            our_mix(server.grpc_url)
        finally:
            started = time.monotonic()
            codes.append(server.close())
            seconds.append(round(time.monotonic() - started, 2))
        print(f"cycle {cycle + 1}: exit {codes[-1]} in {seconds[-1]} s", flush=True)
    return {"cycles": cycles, "exit_0": codes.count(0), "codes": codes, "stop_s_max": max(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--repository", type=Path, default=Path("out/shutdown/model_repository"))
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--wait", type=float, default=10.0)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--sigterm", action="store_true", help="R30: full start/mix/SIGTERM cycles")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import shutil

    shutil.copytree("model_repository", args.repository, dirs_exist_ok=True)
    checkpoint = prepare(args.repository, args.checkpoint, log=lambda _: None)
    settings = ServeSettings(checkpoint=checkpoint)
    if args.sigterm:
        text = json.dumps(sigterm_cycles(args.repository, settings, args.cycles), indent=2)
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
        return
    results: dict[str, dict[str, int]] = {}
    server = TritonServer(args.repository, settings=settings, log=args.repository.parent / "triton.log").start()
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
                    server = TritonServer(
                        args.repository, settings=settings, log=args.repository.parent / "triton.log"
                    ).start()
            print(name, count, flush=True)
    finally:
        server.close()
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
