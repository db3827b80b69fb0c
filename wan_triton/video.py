"""Video encode (the last stage) and decode, with PyAV: frames in [0, 1] <-> MP4 bytes.

Torch-free, so the client can read what the server wrote.
"""

from __future__ import annotations

import io
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# x264's macroblock-tree rate control makes repeated encodes of the same frames differ
# (measured: 2-7 bitstreams in 10 encodes). Without it the bytes are reproducible (R23)
# at ~20% more size; we choose reproducibility.
X264_OPTIONS = {"crf": "18", "preset": "medium", "x264-params": "no-mbtree=1"}


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """[F, H, W, 3] floats in [0, 1] -> uint8, rounded like diffusers' numpy_to_pil."""
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)


def encode_mp4(frames: np.ndarray, fps: int, options: dict[str, str] | None = None) -> bytes:
    """Encode [F, H, W, 3] frames (uint8, or floats in [0, 1]) as H.264/yuv420p MP4 bytes."""
    if frames.dtype != np.uint8:
        frames = to_uint8(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [F, H, W, 3], got {frames.shape}")
    count, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even sizes, got {height}x{width}")
    # +faststart moves the index to the front in a second pass that reopens the output by name,
    # so the muxer writes a real (temporary) file rather than a BytesIO.
    with (
        tempfile.NamedTemporaryFile(suffix=".mp4") as out,
        av.open(out.name, mode="w", format="mp4", options={"movflags": "+faststart"}) as container,
    ):
        stream = container.add_stream("libx264", rate=Fraction(int(fps), 1), options=options or X264_OPTIONS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.thread_count = 1
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(frames[index], format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        container.close()
        return Path(out.name).read_bytes()


def decode_mp4(data: bytes) -> tuple[np.ndarray, float]:
    """MP4 bytes -> ([F, H, W, 3] uint8 frames, fps)."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.base_rate or 0)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    return np.stack(frames), fps
