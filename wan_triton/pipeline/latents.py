"""Stage 2: the initial noise, drawn from the seed exactly as diffusers draws it."""

from __future__ import annotations

import torch

from wan_triton.contract import Geometry


def latent_shape(height: int, width: int, num_frames: int, channels: int, geometry: Geometry) -> tuple:
    frames = (num_frames - 1) // geometry.vae_temporal + 1
    return (1, channels, frames, height // geometry.vae_spatial, width // geometry.vae_spatial)


def initial_latents(seed: int, shape: tuple, device: str | torch.device = "cpu", draw: int = 0) -> torch.Tensor:
    """Float32 noise from a CPU generator, then moved: the same seed gives the same video on any device.
    `draw`: the generator's how-manieth draw of this shape (Wan2.2 Animate's segments draw in turn)."""
    generator = torch.Generator("cpu").manual_seed(seed)
    for _ in range(draw):
        torch.randn(shape, generator=generator, dtype=torch.float32)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
