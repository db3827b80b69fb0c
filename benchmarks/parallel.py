"""serve --parallel on this machine: seconds per denoising step on 1 rank against 2 (ulysses=2,
cfg=2), and the share of a parallel step spent in the ranks' collectives.

    python benchmarks/parallel.py [--checkpoint DIR] [--height 256 --width 256 --num-frames 17]
                                  [--steps 6] [--out benchmarks/results/parallel.json]

The denoiser core every rank holds (serving/ranks.py) on the `bench` checkpoint (8 heads, 8
layers, built if `--checkpoint` is not given), in-process: gloo ranks spawned here, as `serve`
starts them. Time per step is the median over the steps after the first. The communication time is
what torch's profiler records on rank 0 for the c10d collectives (the Ulysses all-to-alls, the
guidance all-gather, the per-step stop flag), per step. On 2 cores two ranks share the cores one
rank already uses: expect no speed-up here; the row is for comparing with a GPU run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from wan_triton.parallel import Group, Parallel
from wan_triton.serving.ranks import Core, Job
from wan_triton.serving.server import free_port

COLLECTIVE_WORDS = ("alltoall", "all_to_all", "allgather", "all_gather", "broadcast", "c10d", "gloo")


def job(core: Core, height: int, width: int, frames: int, steps: int) -> Job:
    rng = np.random.default_rng(0)
    width_text = core.denoiser.transformer.config.text_dim
    embeds, negative = (rng.standard_normal((1, 32, width_text), dtype=np.float32) for _ in range(2))
    return Job(embeds, negative, (height, width, frames, steps, 5.0, None, None, None), [0])


def step_times(core: Core, run_job: Job, between=None) -> list[float]:
    marks = [time.perf_counter()]

    def after_step(index: int, total: int, latents) -> None:
        if between is not None:
            between()
        marks.append(time.perf_counter())

    core.run(run_job, after_step)
    return [b - a for a, b in itertools.pairwise(marks)]


def _rank(rank: int, spec: str, init: str, checkpoint: str, shape: tuple, out: str) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads() // Parallel.parse(spec).world))
    core = Core(checkpoint, "cpu")
    group = Group.join(Parallel.parse(spec), rank, init, "cpu")
    group.apply(core.denoiser)
    the_job = group.broadcast(job(core, *shape) if rank == 0 else None)
    if rank != 0:
        core.run(the_job, lambda *_: group.stop_flag(False))
        group.close()
        return
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        times = step_times(core, the_job, lambda: group.stop_flag(False))
    collective_us = sum(
        event.self_cpu_time_total
        for event in profile.key_averages()
        if any(word in event.key.lower() for word in COLLECTIVE_WORDS)
    )
    Path(out).write_text(json.dumps({"step_s": times, "collective_s": collective_us / 1e6}))
    group.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--num-frames", type=int, default=17)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    shape = (args.height, args.width, args.num_frames, args.steps)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint
        if checkpoint is None:
            from wan_triton.checkpoints import build_checkpoint

            checkpoint = build_checkpoint(Path(folder) / "bench", size="bench")
        core = Core(checkpoint, "cpu")
        alone = step_times(core, job(core, *shape))
        report = {
            "machine": f"{torch.get_num_threads()} torch threads, CPU",
            "checkpoint": "bench (8 heads, 8 layers, 512 wide)" if args.checkpoint is None else str(checkpoint),
            "request": dict(zip(("height", "width", "num_frames", "steps"), shape, strict=True)),
            "1 rank": {"s_per_step": round(statistics.median(alone[1:]), 4)},
        }
        for spec in ("ulysses=2", "cfg=2"):
            out = Path(folder) / "rank0.json"
            init = f"tcp://127.0.0.1:{free_port()}"
            mp.spawn(_rank, args=(spec, init, str(checkpoint), shape, str(out)), nprocs=Parallel.parse(spec).world)
            measured = json.loads(out.read_text())
            per_step = statistics.median(measured["step_s"][1:])
            report[spec] = {
                "s_per_step": round(per_step, 4),
                "speedup": round(report["1 rank"]["s_per_step"] / per_step, 2),
                "collectives_s_per_step": round(measured["collective_s"] / len(measured["step_s"]), 4),
            }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
