"""Would spreading the VAE decode over the parallel ranks pay on this machine? The decode of one
video in one process (all torch threads; and on one thread, for the scaling), against the same
latents cut into vertical strips with an overlap, each strip decoded by its own process on its
share of the threads at the same time: the best case for a decode split by tiles over ranks (the
strips' blending and the gather to rank 0, left out here, only add to it).

    python benchmarks/vae_spread.py [--checkpoint DIR | --size bench] [--height 480 --width 832 --num-frames 33]
                                    [--ranks 2] [--overlap 4] [--out benchmarks/results/vae_spread.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import torch

from wan_triton.contract import Geometry
from wan_triton.pipeline.checkpoint import Checkpoint

_vae = None  # each strip process's own VAE


def _load(checkpoint: str, threads: int) -> None:
    global _vae
    torch.set_num_threads(threads)
    _vae = Checkpoint.open(checkpoint).vae()


@torch.no_grad()
def _decode(latents: torch.Tensor) -> float:
    started = time.perf_counter()
    _vae.decode(latents)
    return time.perf_counter() - started


def edges(width: int, ranks: int) -> list[tuple[int, int]]:
    cuts = [round(width * r / ranks) for r in range(ranks + 1)]
    return list(itertools.pairwise(cuts))


def strips(latents: torch.Tensor, ranks: int, overlap: int) -> list[torch.Tensor]:
    """`ranks` vertical strips of the latents, each `overlap` latent columns wider on its inner sides."""
    width = latents.shape[-1]
    return [latents[..., max(0, a - overlap) : min(width, b + overlap)].contiguous() for a, b in edges(width, ranks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--size", default="bench")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--num-frames", type=int, default=33)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--overlap", type=int, default=4, help="latent columns each strip shares with its neighbour")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint
        if checkpoint is None:
            from wan_triton.checkpoints import build_checkpoint

            checkpoint = build_checkpoint(Path(folder) / args.size, size=args.size)
        geometry = Geometry.from_checkpoint(checkpoint)
        channels = Checkpoint.open(checkpoint).config("vae")["z_dim"]
        frames = (args.num_frames - 1) // geometry.vae_temporal + 1
        shape = (1, channels, frames, args.height // geometry.vae_spatial, args.width // geometry.vae_spatial)
        latents = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        timings: dict[str, float] = {}
        for name, count in (("one process", threads), ("one process, 1 thread", 1)):
            _load(str(checkpoint), count)
            _decode(latents)  # warm-up
            timings[name] = statistics.median(_decode(latents) for _ in range(args.repeats))
        torch.set_num_threads(threads)
        pieces = strips(latents, args.ranks, args.overlap)
        share = max(1, threads // args.ranks)
        context = multiprocessing.get_context("spawn")
        with context.Pool(args.ranks, initializer=_load, initargs=(str(checkpoint), share)) as pool:
            pool.map(_decode, pieces)  # warm-up, one strip per process
            walls = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                pool.map(_decode, pieces, chunksize=1)
                walls.append(time.perf_counter() - started)
        timings[f"{args.ranks} strips at once, {share} thread(s) each"] = statistics.median(walls)
    whole = timings["one process"]
    report = {
        "machine": f"{threads} torch threads, CPU",
        "checkpoint": str(args.checkpoint) if args.checkpoint else f"{args.size} VAE",
        "request": {"height": args.height, "width": args.width, "num_frames": args.num_frames},
        "overlap_latent_columns": args.overlap,
        "strip_widths": [piece.shape[-1] for piece in pieces],
        "decode_s": {name: round(seconds, 3) for name, seconds in timings.items()},
        "spread_speedup": round(whole / timings[f"{args.ranks} strips at once, {share} thread(s) each"], 2),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
