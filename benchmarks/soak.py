"""R17 soak: sequential generations against a running `wan-triton serve`, memory sampled.

    python benchmarks/soak.py --repository model_repository [--url 127.0.0.1:8001] [--requests 200]

Samples the resident memory (VmRSS) of tritonserver and of every Python-backend stub serving
`--repository` every `--every` requests, alternating plain and streaming requests with varied
prompts and seeds. Prints JSON: the samples, and the growth of the total from the end of warm-up
(`--warmup` requests) to the end, in percent (R17 wants it within 5 %).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from wan_triton.client import Client
from wan_triton.serving.server import parent, stub_processes


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def server_pids(repository: Path) -> dict[str, int]:
    """tritonserver (the stubs' parent) and each stub, by model instance name."""
    stubs = stub_processes(repository.resolve())
    # A stub's command line ends with its instance name (e.g. denoiser_0_0) and the device kind.
    pids = {line.split()[-2]: pid for pid, line in stubs.items()}
    (server,) = {parent(pid) for pid in stubs}
    return {**pids, "tritonserver": server}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--num-frames", type=int, default=17)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    options = {"height": args.height, "width": args.width, "num_frames": args.num_frames}
    options["num_inference_steps"] = args.steps
    client = Client(args.url)
    client.wait_ready(600)
    samples = []
    started = time.perf_counter()
    for index in range(args.requests + 1):
        if index % args.every == 0:
            pids = server_pids(args.repository)
            memory = {name: round(rss_mib(pid), 1) for name, pid in sorted(pids.items())}
            samples.append({"after": index, "total_mib": round(sum(memory.values()), 1), "mib": memory})
        if index == args.requests:
            break
        prompt = f"soak {index}: a cat number {index % 7} walking"
        if index % 2:
            client.generate_stream(prompt, seed=index, **options)
        else:
            client.generate(prompt, seed=index, **options)
    base = next(s for s in samples if s["after"] >= args.warmup)["total_mib"]
    end = samples[-1]["total_mib"]
    print(
        json.dumps(
            {
                "requests": args.requests,
                "seconds": round(time.perf_counter() - started, 1),
                "options": options,
                "total_mib_after_warmup": base,
                "total_mib_at_end": end,
                "growth_percent": round(100 * (end - base) / base, 2),
                "samples": samples,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
