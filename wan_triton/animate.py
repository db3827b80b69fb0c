"""Wan2.2 Animate's segments and conditioning, as diffusers' WanAnimatePipeline builds them, in numpy.

Torch-free, like vace.py. A long driving video is generated in segments of `segment_frame_length`
frames, each starting from the last `prev_segment_conditioning_frames` frames of the one before
(the first from blank frames, or in `replace` mode from the background video); the driving videos
are padded to a whole number of segments by running them back and forth. Each segment's condition
beside the noise is the character image's latents (one latent frame, mask all ones) in front of the
previous frames' clip's latents with a mask of what is given (4 + 16 channels).
"""

from __future__ import annotations

import numpy as np


def segments(frames: int, length: int, overlap: int) -> int:
    """How many segments cover `frames` driving frames."""
    step = length - overlap
    return -(-max(frames - overlap, 1) // step)


def padded_frames(frames: int, length: int, overlap: int) -> int:
    """The driving frames the segments read: a whole number of segments."""
    return overlap + segments(frames, length, overlap) * (length - overlap)


def pad_back_and_forth(frames: np.ndarray, count: int) -> np.ndarray:
    """The first `count` frames of the video run forwards, backwards, forwards, ... (diffusers'
    pad_video_frames: 1 2 3 4 5 -> 1 2 3 4 5 4 3 2 1 2)."""
    index, step, order = 0, 1, []
    while len(order) < count:
        order.append(index)
        if len(frames) > 1:
            index += step
            if index in (0, len(frames) - 1):
                step = -step
    return frames[order]


def condition_mask(latent_frames: int, height: int, width: int, given: int, temporal: int, pixels=None) -> np.ndarray:
    """diffusers' get_i2v_mask: ones on the first `given` pixel frames (or over `pixels`
    [F, height, width], 1 where the frame is kept), the first frame's repeated `temporal` times,
    folded into `temporal` channels per latent frame: [1, temporal, latent_frames, height, width]."""
    if pixels is None:
        mask = np.zeros(((latent_frames - 1) * temporal + 1, height, width), np.float32)
    else:
        mask = pixels.astype(np.float32, copy=True)
    mask[:given] = 1
    mask = np.concatenate([np.repeat(mask[:1], temporal, axis=0), mask[1:]])
    return np.ascontiguousarray(mask.reshape(-1, temporal, height, width).transpose(1, 0, 2, 3)[None])


def kept_pixels(mask_video: np.ndarray, spatial: int) -> np.ndarray:
    """`replace`: uint8 grey mask frames [F, H, W] (white: the character) -> float [F, H/s, W/s], 1
    where the background is kept, every s-th pixel (torch's "nearest" at a factor of s)."""
    values = mask_video.astype(np.float32) / np.float32(255.0)
    return np.float32(1.0) - values[:, ::spatial, ::spatial]
