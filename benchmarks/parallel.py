"""serve --parallel on this machine: seconds per denoising step on 1 rank against several, and
the share of a parallel step spent in the ranks' collectives.

    python benchmarks/parallel.py [--checkpoint DIR | --size bench] [--height 256 --width 256 --num-frames 17]
                                  [--steps 6] [--specs ulysses=2 cfg=2] [--out benchmarks/results/parallel.json]
    python benchmarks/parallel.py --device cuda --shape t2v-14b \
                                  --height 720 --width 1280 --num-frames 81     # multi-GPU: see gpu_check.sh

The denoiser core every rank holds (serving/ranks.py) on `--checkpoint`, one built at `--size`
(default `bench`: 8 heads, 8 layers; `1.3b` on a GPU), or a published checkpoint's shape with random
weights made on the device (`--shape t2v-14b`: Wan2.1-14B's 40 heads and 40 layers, 28 GB a rank in
bf16; nothing written to disk but the configs), in-process: ranks spawned here as `serve`
starts them (gloo on the CPU; NCCL on GPUs, rank r on cuda:r, bf16). Without `--specs`: ulysses=2
and cfg=2 on a CPU; on GPUs ulysses 2, 4, 8 and cfg=2 as far as the GPUs go, and degrees that do not
divide the heads are reported as refused. Time per step is the median over the steps after the
first. The communication time is what torch's profiler records on rank 0 for the c10d collectives
(the Ulysses all-to-alls, the guidance all-gather, the per-step stop flag), per step. On 2 cores
two ranks share the cores one rank already uses: expect no speed-up there; compare with a GPU run.
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

from wan_triton.checkpoints.shapes import SHAPES, write_shape
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
        if core.device.startswith("cuda"):
            torch.cuda.synchronize()
        marks.append(time.perf_counter())

    core.run(run_job, after_step)
    return [b - a for a, b in itertools.pairwise(marks)]


def random_weights() -> None:
    """Transformers built from their configs with random weights, on the device, in the dtype: for
    the config-only folders of `--shape` (checkpoints/shapes.py), too large to write here."""
    from diffusers import WanTransformer3DModel

    from wan_triton.pipeline.checkpoint import Checkpoint

    def transformer(self, name="transformer", dtype=torch.float32, device="cpu"):
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                return WanTransformer3DModel.from_config(self.config(name)).eval()
        finally:
            torch.set_default_dtype(default)

    Checkpoint.transformer = transformer


def _rank(rank: int, spec: str, init: str, checkpoint: str, shape: tuple, out: str, device: str, random: bool) -> None:
    if random:
        random_weights()
    if device == "cuda":
        torch.cuda.set_device(rank)
    else:  # the ranks share this machine's cores, as one rank alone has them all
        torch.set_num_threads(max(1, torch.get_num_threads() // Parallel.parse(spec).world))
    core = Core(checkpoint, f"cuda:{rank}" if device == "cuda" else "cpu")
    group = Group.join(Parallel.parse(spec), rank, init, device)
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


def default_specs(device: str) -> list[str]:
    if device != "cuda":
        return ["ulysses=2", "cfg=2"]
    gpus = torch.cuda.device_count()
    specs = [f"ulysses={n}" for n in (2, 4, 8) if n <= gpus] + (["cfg=2"] if gpus >= 2 else [])
    return specs + (["ulysses=4,cfg=2"] if gpus >= 8 else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--size", help="build a checkpoint of this size (default: bench; 1.3b with --device cuda)")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="a published shape, random weights (no --checkpoint)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--num-frames", type=int, default=17)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--specs", nargs="*", help="parallel modes to time, e.g. ulysses=2 cfg=2")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    shape = (args.height, args.width, args.num_frames, args.steps)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint
        size = args.size or ("1.3b" if args.device == "cuda" else "bench")
        if args.shape:
            checkpoint = write_shape(Path(folder) / args.shape, args.shape)
            random_weights()
        elif checkpoint is None:
            from wan_triton.checkpoints import build_checkpoint

            checkpoint = build_checkpoint(Path(folder) / size, size=size)
        core = Core(checkpoint, "cuda:0" if args.device == "cuda" else "cpu")
        alone = step_times(core, job(core, *shape))
        config = core.denoiser.transformer.config
        del core
        machine = (
            f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
            if args.device == "cuda"
            else f"{torch.get_num_threads()} torch threads, CPU"
        )
        report = {
            "machine": machine,
            "checkpoint": str(args.checkpoint)
            if args.checkpoint
            else f"{args.shape or size} ({config.num_attention_heads} heads,"
            f" {config.num_layers} layers, {config.num_attention_heads * config.attention_head_dim} wide)",
            "request": dict(zip(("height", "width", "num_frames", "steps"), shape, strict=True)),
            "1 rank": {"s_per_step": round(statistics.median(alone[1:]), 4)},
        }
        for spec in args.specs or default_specs(args.device):
            parallel = Parallel.parse(spec)
            try:
                parallel.check(config, args.device, torch.cuda.device_count() if args.device == "cuda" else None)
            except ValueError as exc:
                report[spec] = {"refused": str(exc)}
                continue
            out = Path(folder) / "rank0.json"
            init = f"tcp://127.0.0.1:{free_port()}"
            mp.spawn(
                _rank,
                args=(spec, init, str(checkpoint), shape, str(out), args.device, bool(args.shape)),
                nprocs=parallel.world,
            )
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
