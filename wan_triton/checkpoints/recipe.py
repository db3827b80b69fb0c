"""What a `train-tiny` run depends on, torch-free: the command line's options are its fields."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """Everything a run depends on; written into the manifest."""

    seed: int = 0
    vae_steps: int = 2000
    vae_batch: int = 4
    vae_frames: int = 5  # the first frame plus one 4-frame chunk: both of the causal VAE's paths
    video_steps: int = 450
    video_batch: int = 2
    video_frames: int = 9  # two 4-frame chunks: the second runs on the first's cache, as every later one
    video_lr: float = 2e-4
    long_steps: int = 500
    long_batch: int = 2
    long_frames: int = 17  # every chunk the served clips have: past the trained ones, the cache drifts
    long_lr: float = 1e-4
    vae_lr: float = 5e-4
    clips: int = 1536  # 17-frame clips the transformer learns from
    transformer_steps: int = 8000
    transformer_batch: int = 32
    transformer_lr: float = 1e-3
    decoder_steps: int = 0  # then the decoder alone, on the frozen encoder's latents
    decoder_lr: float = 2e-4
    drop_caption: float = 0.1
    frames: int = 17
    size: int = 64
