"""Image-to-video and video-to-video against live servers: parity with diffusers (R25), media
decoding (R7, R8), the audio track."""

import numpy as np
import pytest
from conftest import SMALL, small_request
from test_tasks import pixels

from wan_triton import media
from wan_triton.client import Client, ClientError
from wan_triton.conditioning import Media
from wan_triton.contract import Limits
from wan_triton.pipeline.reference import diffusers_frames
from wan_triton.video import encode_mp4, to_uint8

V2V = {**SMALL, "strength": 0.75, "seed": 42}


def clip(frames: int = 9) -> bytes:
    return encode_mp4(pixels((frames, 32, 48, 3), 1).astype(np.float32) / 255.0, 16)


def decoded(video: bytes) -> np.ndarray:
    limits = Limits()
    frames, _ = media.decode_video(
        video,
        max_bytes=limits.max_video_bytes,
        max_pixels=limits.max_media_pixels,
        max_frames=limits.max_frames,
        max_seconds=limits.max_media_seconds,
    )
    return frames


def test_served_video_to_video_matches_diffusers(served):
    from diffusers import WanVideoToVideoPipeline

    source = clip()
    result = Client(served.url).generate("a red cat walking in the snow", frames=True, video=source, **V2V)
    request = small_request("v2v", video=source, strength=0.75)
    expected = diffusers_frames(
        WanVideoToVideoPipeline.from_pretrained(served.checkpoint), request, Media(video=decoded(source))
    )
    difference = np.abs(result.frames.astype(int) - to_uint8(expected).astype(int))
    print("v2v served vs diffusers: max", difference.max(), "mean", difference.mean())
    assert difference.max() <= 1, difference.max()
