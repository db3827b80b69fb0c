"""Wan2.2-S2V's clips, as the release cuts a video into them (`wan/speech2video.py`). Torch-free: the entries
plan the clips, the stages and the in-process pipeline run them.

Each clip generates `CLIP_FRAMES` frames from `CLIP_FRAMES / 4` latent frames, with noise from `seed + clip`.
The first clip is decoded behind the reference image's latent frame and drops `FIRST_CLIP_DROPPED` frames
more; each later one is decoded behind the latents of the last `MOTION_FRAMES` frames made before it, the
motion it carries on. So `clips` clips make `CLIP_FRAMES * clips - FIRST_CLIP_DROPPED` frames.
"""

from __future__ import annotations

import math

CLIP_FRAMES = 80  # the release's `infer_frames`
FIRST_CLIP_DROPPED = 3
MOTION_FRAMES = 73  # the transformer config's `motion_frames`: 19 latent frames
FPS = 16  # the rate the audio features are taken at, per video frame


def clips_for(num_frames: int) -> int:
    """Clips that make at least `num_frames` frames."""
    return max(1, math.ceil((num_frames + FIRST_CLIP_DROPPED) / CLIP_FRAMES))


def frames_of(clips: int) -> int:
    return clips * CLIP_FRAMES - FIRST_CLIP_DROPPED


def clip_seed(seed: int, clip: int, seed_max: int = 2**63 - 1) -> int:
    """The clip's noise seed: the release's `seed + clip`, wrapped within the seeds the contract allows."""
    return (seed + clip) % (seed_max + 1)
