"""The video encoder stage (Python backend): uint8 frames (and mono audio) to MP4 bytes (PyAV)."""

from __future__ import annotations

import numpy as np

from wan_triton.serving.glue import (
    bytes_tensor,
    from_entry,
    inputs,
    per_request,
    response,
)
from wan_triton.serving.models import (
    AUDIO_SAMPLES,
    FPS,
    FRAMES,
    VIDEO,
)


class VideoEncoderModel:
    """uint8 frames (and mono audio) to MP4 bytes, in this process: raw frames never reach the
    client by default."""

    def initialize(self, args: dict) -> None:
        from wan_triton.video import encode_mp4

        self.encode = encode_mp4
        self.encode(np.zeros((1, 16, 16, 3), np.uint8), 16)

    def execute(self, requests: list) -> list:
        from wan_triton.conditioning import AUDIO_RATE

        def one(request):
            given = inputs(request, [FRAMES.name, FPS.name, AUDIO_SAMPLES.name])
            audio = given[AUDIO_SAMPLES.name][0] if AUDIO_SAMPLES.name in given else None
            fps = int(given[FPS.name].reshape(-1)[0])
            return response({VIDEO.name: bytes_tensor(self.encode(given[FRAMES.name][0], fps, audio, AUDIO_RATE))})

        return per_request(requests, from_entry(one))
