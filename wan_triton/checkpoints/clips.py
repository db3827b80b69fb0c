"""Synthetic captioned clips: one coloured shape moving in a straight line over a plain background.

What `train-tiny` learns from, and how its videos are judged: a clip's caption names everything in it
("a red circle moving left on a blue background"), so whether a generated video shows the prompt can
be measured (`motion_of`: where the prompted colour is, frame by frame) rather than looked at.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (50, 90, 230),
    "yellow": (235, 205, 40),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (16, 16, 16), "white": (236, 236, 236), "blue": (30, 50, 130)}
# (dx, dy) per frame, in units of the clip's speed; image rows grow downwards.
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
WORDS = ("circle", "square", "moving", "left", "right", "up", "down", "background")  # beyond the tiny vocabulary
SPEED = 1.5  # pixels per frame at 64 px: 24 px over 17 frames
RADIUS = (7.0, 10.0)  # half the shape's width, in pixels at 64 px


@dataclass(frozen=True)
class Caption:
    shape: str
    colour: str
    direction: str
    background: str

    @property
    def text(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.direction} on a {self.background} background"


def captions() -> list[Caption]:
    """Every combination whose shape can be told from its background."""
    every = itertools.product(SHAPES, COLOURS, DIRECTIONS, BACKGROUNDS)
    return [Caption(*parts) for parts in every if parts[1] != parts[3]]


def clip(caption: Caption, rng: np.random.Generator, frames: int = 17, size: int = 64) -> np.ndarray:
    """uint8 frames [F, size, size, 3]: the shape enters nowhere and leaves nowhere (its whole path is
    in view), at a random start, radius and speed within 20% of SPEED, edges anti-aliased."""
    scale = size / 64.0
    radius = rng.uniform(*RADIUS) * scale
    speed = SPEED * scale * rng.uniform(0.8, 1.2)
    dx, dy = DIRECTIONS[caption.direction]
    travel = speed * (frames - 1)
    margin = radius + 1.0

    def start(step: int) -> float:  # along the motion, room for the whole path; across it, anywhere
        low, high = margin + travel * (step < 0), size - margin - travel * (step > 0)
        return rng.uniform(low, max(low, high))

    x0, y0 = start(dx), start(dy)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    background = np.asarray(BACKGROUNDS[caption.background], np.float32)
    colour = np.asarray(COLOURS[caption.colour], np.float32)
    out = np.empty((frames, size, size, 3), np.uint8)
    for f in range(frames):
        cx, cy = x0 + dx * speed * f, y0 + dy * speed * f
        if caption.shape == "circle":
            distance = np.hypot(xs - cx, ys - cy)
        else:
            distance = np.maximum(np.abs(xs - cx), np.abs(ys - cy))
        cover = np.clip(radius + 0.5 - distance, 0.0, 1.0)[..., None]
        out[f] = np.rint(background + (colour - background) * cover).astype(np.uint8)
    return out


def dataset(count: int, seed: int, frames: int = 17, size: int = 64) -> tuple[np.ndarray, list[Caption]]:
    """`count` clips [N, F, H, W, 3] uint8, cycling through every caption; the same seed, the same clips."""
    rng = np.random.default_rng(seed)
    every = captions()
    chosen = [every[i % len(every)] for i in rng.permutation(max(count, len(every)))[:count]]
    return np.stack([clip(c, rng, frames, size) for c in chosen]), chosen


def motion_of(frames: np.ndarray, caption: Caption) -> tuple[float, float, float]:
    """Frames [F, H, W, 3] (uint8 or [0, 1] floats) -> (share of frames in which the prompted colour
    covers at least 2% of the picture, its centroid's displacement along the prompted direction and
    across it, in pixels, first such frame to last). A pixel is the prompted colour when that is the
    nearest of the palette (every shape colour and background)."""
    pixels = np.asarray(frames, np.float32)
    if pixels.max() <= 1.0:
        pixels = pixels * 255.0
    palette = {**{f"bg-{k}": v for k, v in BACKGROUNDS.items()}, **COLOURS}
    names = list(palette)
    reference = np.asarray([palette[n] for n in names], np.float32)
    nearest = np.argmin(((pixels[..., None, :] - reference) ** 2).sum(-1), axis=-1)
    mask = nearest == names.index(caption.colour)
    area = mask.sum(axis=(1, 2))
    present = area >= 0.02 * mask.shape[1] * mask.shape[2]
    if present.sum() < 2:
        return float(present.mean()), 0.0, 0.0
    ys, xs = np.mgrid[0 : mask.shape[1], 0 : mask.shape[2]]
    seen = np.flatnonzero(present)
    centroid = (
        np.stack([(xs * mask[f]).sum() / area[f] for f in seen]),
        np.stack([(ys * mask[f]).sum() / area[f] for f in seen]),
    )
    moved = np.array([centroid[0][-1] - centroid[0][0], centroid[1][-1] - centroid[1][0]])
    along = np.asarray(DIRECTIONS[caption.direction], np.float32)
    across = np.array([-along[1], along[0]])
    return float(present.mean()), float(moved @ along), float(moved @ across)


def shows(frames: np.ndarray, caption: Caption, min_travel: float = 6.0) -> bool:
    """Whether a video shows its caption: the prompted colour in nearly every frame, its centroid moving
    at least `min_travel` pixels the prompted way and less than that across it."""
    present, along, across = motion_of(frames, caption)
    return present >= 0.9 and along >= min_travel and abs(across) < min_travel
