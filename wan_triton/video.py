"""Video encode (the last stage) and decode, with PyAV: frames in [0, 1] (+ mono audio) <-> MP4 bytes.

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
AAC_BIT_RATE = 128_000
AAC_SAMPLE_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """[F, H, W, 3] floats in [0, 1] -> uint8, rounded like diffusers' numpy_to_pil."""
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)


def encode_mp4(
    frames: np.ndarray,
    fps: int,
    audio: np.ndarray | None = None,
    sample_rate: int = 0,
    *,
    options: dict[str, str] | None = None,
) -> bytes:
    """Encode [F, H, W, 3] frames (uint8, or floats in [0, 1]) as H.264/yuv420p MP4 bytes.

    With `audio` (mono float samples in [-1, 1] at `sample_rate`) the MP4 also carries an AAC track,
    trimmed or padded with silence to the video's duration (count / fps).
    """
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
        track = None if audio is None else _AudioTrack(container, audio, sample_rate, count, int(fps))
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(frames[index], format="rgb24")
            container.mux(stream.encode(frame))
            if track is not None:  # the audio of the same frame next to it: interleaved, as players read it
                track.mux_until(index + 1)
        container.mux(stream.encode(None))
        if track is not None:
            track.close()
        container.close()
        return Path(out.name).read_bytes()


class _AudioTrack:
    """A mono AAC stream fed one video frame's worth of samples at a time."""

    def __init__(self, container: av.container.OutputContainer, audio: np.ndarray, rate: int, count: int, fps: int):
        if audio.ndim != 1:
            raise ValueError(f"audio must be mono [samples], got {audio.shape}")
        if rate not in AAC_SAMPLE_RATES:
            raise ValueError(f"AAC needs a sample rate in {AAC_SAMPLE_RATES}, got {rate}")
        self.container, self.rate, self.fps = container, rate, fps
        # Trim or pad with silence to the video's duration; clip because AAC has no headroom convention.
        self.samples = np.zeros(round(count * rate / fps), np.float32)
        kept = min(len(self.samples), len(audio))
        self.samples[:kept] = np.clip(audio[:kept], -1.0, 1.0)
        # ffmpeg's native encoder: always built (libfdk_aac is not), and deterministic (R23).
        self.stream = container.add_stream("aac", rate=rate, layout="mono")
        self.stream.bit_rate = AAC_BIT_RATE
        self.done = 0

    def mux_until(self, frames: int) -> None:
        end = round(frames * self.rate / self.fps)
        if end <= self.done:
            return
        chunk = av.AudioFrame.from_ndarray(self.samples[None, self.done : end], format="fltp", layout="mono")
        chunk.sample_rate, chunk.pts, chunk.time_base = self.rate, self.done, Fraction(1, self.rate)
        self.container.mux(self.stream.encode(chunk))  # PyAV re-chunks into AAC's 1024-sample frames
        self.done = end

    def close(self) -> None:
        self.container.mux(self.stream.encode(None))


def decode_mp4(data: bytes) -> tuple[np.ndarray, float]:
    """MP4 bytes -> ([F, H, W, 3] uint8 frames, fps)."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.base_rate or 0)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    return np.stack(frames), fps
