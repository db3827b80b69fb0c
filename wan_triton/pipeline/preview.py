"""Preview frames without the VAE: a linear map from latent channels to RGB, fitted to the checkpoint's VAE.

A step's preview used to be a full-resolution VAE decode of the first latent frame, on the shared
decoder, every step. The map here is what other Wan front ends use for previews (latent-to-RGB
factors), except that its factors are not copied from anywhere: they are a least-squares fit of the
checkpoint's own encoder, done once at load on a few synthetic images of blocks of flat colour (whose
colour is what each latent cell must carry). Its quality, R^2 of the fit, is logged; with random
weights it is poor, with trained ones the previews show the scene's colours and layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from wan_triton.pipeline.vae import torch_encode

FIT_IMAGES = 8
FIT_CELLS = 8  # latent cells a side of each fitting image
BLOCK_CELLS = 2  # latent cells a side of each flat-coloured block


@dataclass(frozen=True)
class Projection:
    weights: torch.Tensor  # [3, C]: latent channels to RGB in [-1, 1]
    bias: torch.Tensor  # [3]
    spatial: int  # pixels per latent cell, each side
    r2: float  # how much of the fitting colours' variance the map explains

    def to(self, device: str) -> Projection:
        return Projection(self.weights.to(device), self.bias.to(device), self.spatial, self.r2)

    def frame(self, latents: torch.Tensor, side: int) -> np.ndarray:
        """First latent frame [C, F, h, w] (normalised, as the denoiser holds it) -> uint8 [H, W, 3], each
        cell repeated up to the VAE's spatial factor, at most `side` pixels a side."""
        cells = latents[:, 0].float()
        rgb = torch.einsum("oc,chw->hwo", self.weights, cells) + self.bias
        pixels = ((rgb * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        repeat = max(1, min(self.spatial, side // max(pixels.shape[:2])))
        return np.ascontiguousarray(pixels.repeat(repeat, axis=0).repeat(repeat, axis=1))


def spatial_factor(config) -> int:
    return int(config.get("scale_factor_spatial") or 2 ** (len(config["dim_mult"]) - 1))


def fit(vae, seed: int = 0) -> Projection:
    """Least squares from the encoder's latents of flat-coloured blocks to the blocks' colours."""
    spatial = spatial_factor(vae.config)
    blocks = FIT_CELLS // BLOCK_CELLS
    colours = np.random.default_rng(seed).uniform(-1, 1, (FIT_IMAGES, 3, blocks, blocks)).astype(np.float32)
    image = colours.repeat(BLOCK_CELLS * spatial, axis=2).repeat(BLOCK_CELLS * spatial, axis=3)
    latents = torch_encode(vae, image[:, :, None])[:, :, 0]  # [N, C, h, w]
    target = colours.repeat(BLOCK_CELLS, axis=2).repeat(BLOCK_CELLS, axis=3)  # the colour under each cell
    x = latents.transpose(0, 2, 3, 1).reshape(-1, latents.shape[1]).astype(np.float64)
    y = target.transpose(0, 2, 3, 1).reshape(-1, 3).astype(np.float64)
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    solution = np.linalg.lstsq(design, y, rcond=None)[0]  # [C + 1, 3]
    residual = ((design @ solution - y) ** 2).sum()
    r2 = float(1 - residual / ((y - y.mean(axis=0)) ** 2).sum())
    weights = torch.from_numpy(solution[:-1].T.astype(np.float32))
    return Projection(weights, torch.from_numpy(solution[-1].astype(np.float32)), spatial, r2)
