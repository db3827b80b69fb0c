"""What a streaming preview costs per denoising step: the VAE decode of the first latent frame (before)
against the denoiser's linear projection (pipeline/preview.py, now), at a real Wan2.1 VAE's size.

    python benchmarks/preview.py [--height 480 --width 832] [--out benchmarks/results/preview.json]

The VAE is the published Wan2.1 architecture with random weights (wan_triton/checkpoints/shapes.py):
timings do not depend on the weights. torch on this machine's CPU, or its GPU with --device cuda.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def timed(run, repeats: int) -> float:
    run()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - started) / repeats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/preview.json"))
    args = parser.parse_args(argv)
    from diffusers import AutoencoderKLWan

    from wan_triton.checkpoints.shapes import VAE_21
    from wan_triton.contract import PREVIEW_SIDE
    from wan_triton.pipeline import preview
    from wan_triton.pipeline.vae import torch_decode

    torch.manual_seed(0)
    vae = AutoencoderKLWan(attn_scales=[], **VAE_21).eval()
    started = time.perf_counter()
    projection = preview.fit(vae)
    fit_s = time.perf_counter() - started
    vae, projection = vae.to(args.device), projection.to(args.device)
    latents = np.random.default_rng(0).standard_normal((1, 16, 1, args.height // 8, args.width // 8), np.float32)
    on_device = torch.from_numpy(latents[0]).to(args.device)
    decode_s = timed(lambda: torch_decode(vae, latents), repeats=2)
    project_s = timed(lambda: projection.frame(on_device, PREVIEW_SIDE), repeats=20)
    report = {
        "device": args.device,
        "frame": [args.height, args.width],
        "vae_parameters": sum(p.numel() for p in vae.parameters()),
        "decode_first_frame_s": round(decode_s, 4),
        "projection_s": round(project_s, 6),
        "speedup": round(decode_s / project_s),
        "fit_at_load_s": round(fit_s, 2),
        "preview_shape": list(projection.frame(on_device, PREVIEW_SIDE).shape),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
