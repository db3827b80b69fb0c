"""Wan VACE's control latents, as diffusers' WanVACEPipeline builds them, in numpy.

Torch-free: the entry models assemble them from the VAE encoder's outputs, and in-process the same
code runs. The transformer's VACE blocks take, per latent frame, the video's latents outside the
mask and inside it (z_dim each, encoded apart), then the mask folded into the latent grid (each
8 x 8 pixels become 64 channels; latent frames take the nearest pixel frame). Each reference image
is encoded alone, as one frame, with z_dim zero channels after its latents and a zero mask, and
goes in front of the video's frames, the last given first; the noise has those frames too, and
the denoiser drops them before the decode.
"""

from __future__ import annotations

import numpy as np

from wan_triton.contract import Geometry


def mask_values(mask: np.ndarray) -> np.ndarray:
    """uint8 mask pixels -> float32 in [0, 1], with diffusers' arithmetic (white: generate)."""
    signed = np.float32(2.0) * (mask.astype(np.float32) / np.float32(255.0)) - np.float32(1.0)
    return np.clip((signed + np.float32(1.0)) / np.float32(2.0), 0.0, 1.0)


def masked_clips(video: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """A clip [1, 3, F, H, W] in [-1, 1] and its uint8 mask [F, H, W, 3] (or any shape that
    broadcasts; None: generate it all) -> (what is kept, what is generated), each encoded apart."""
    # diffusers' `mask_values > 0.5`: 127 maps to 0.498 and 128 to 0.502, far from any rounding.
    inside = np.float32(1.0) if mask is None else (mask > 127).astype(np.float32).transpose(3, 0, 1, 2)[None]
    return video * (np.float32(1.0) - inside), video * inside


def fold_mask(mask: np.ndarray | None, shape: tuple[int, int, int], geometry: Geometry, references: int) -> np.ndarray:
    """The uint8 mask [F, H, W, 3] of a clip of `shape` (F, H, W), None for all white ->
    [1, s*s, references + latent frames, H/s, W/s] for s the VAE's spatial factor: the first
    channel's s x s pixel blocks as channels, each latent frame the nearest pixel frame (torch's
    "nearest-exact", as diffusers' prepare_masks), zeros on the reference frames."""
    frames, height, width = shape
    s = geometry.vae_spatial
    latent_frames = (frames + geometry.vae_temporal - 1) // geometry.vae_temporal
    if mask is None:
        folded = np.ones((s * s, latent_frames, height // s, width // s), np.float32)
    else:
        # (2i + 1) F / 2f is never an integer for F = 4k + 1: float64 picks the frames torch does.
        nearest = np.minimum(np.floor((np.arange(latent_frames) + 0.5) * frames / latent_frames), frames - 1)
        picked = mask_values(mask[nearest.astype(np.int64), :, :, 0])  # only the frames it keeps
        blocks = picked.reshape(latent_frames, height // s, s, width // s, s).transpose(2, 4, 0, 1, 3)
        folded = blocks.reshape(s * s, latent_frames, height // s, width // s)
    padding = np.zeros((s * s, references, *folded.shape[2:]), np.float32)
    return np.concatenate([padding, folded], axis=1)[None]


def control_latents(video_latents: np.ndarray, references: list[np.ndarray], folded_mask: np.ndarray) -> np.ndarray:
    """The kept and generated latents [1, 2z, f, h, w], each reference's latents [1, z, 1, h, w] and
    the folded mask -> the control latents [1, 2z + s*s, references + f, h, w]."""
    latents = video_latents
    for reference in references:  # each in front of the ones before: the last given comes first
        latents = np.concatenate([np.concatenate([reference, np.zeros_like(reference)], axis=1), latents], axis=2)
    return np.ascontiguousarray(np.concatenate([latents, folded_mask], axis=1), dtype=np.float32)
