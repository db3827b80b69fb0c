"""The audio encoder stage (Python backend): Wan2.2-S2V's wav2vec2 features per video frame (ONNX Runtime)."""

from __future__ import annotations

import numpy as np

from wan_triton.contract import RequestError
from wan_triton.repository import AUDIO_ENCODER, ONNX_FILES
from wan_triton.serving.glue import (
    ModelContext,
    from_entry,
    inputs,
    per_request,
    response,
)
from wan_triton.serving.models import (
    AUDIO_FEATURES,
    AUDIO_SAMPLES,
    limits_of,
)


class AudioEncoderModel:
    """Wan2.2-S2V: the request's audio (mono at conditioning.AUDIO_RATE) to wav2vec2's features per video frame
    at 16 fps, in whole clips (wan_triton/s2v/audio.py): resampled to 16 kHz with librosa, the hidden states
    through the exported graph (ONNX Runtime), then taken per frame."""

    def initialize(self, args: dict) -> None:
        from wan_triton import onnx_runtime as rt

        context = ModelContext(args)
        self.limits = limits_of(context.config)
        self.session = rt.session(context.folder / ONNX_FILES[AUDIO_ENCODER]["model"], context.device)
        self._features(np.zeros(4410, np.float32))

    def _features(self, samples: np.ndarray) -> np.ndarray:
        import torch

        from wan_triton.conditioning import AUDIO_RATE
        from wan_triton.repository import AUDIO_GRAPH_INPUT
        from wan_triton.s2v import audio

        def hidden(values: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(self.session.run(None, {AUDIO_GRAPH_INPUT: values})[0])

        return audio.features(samples, AUDIO_RATE, hidden)

    def execute(self, requests: list) -> list:
        from wan_triton.conditioning import AUDIO_RATE

        def one(request):
            samples = inputs(request, [AUDIO_SAMPLES.name])[AUDIO_SAMPLES.name].reshape(-1)
            longest = self.limits.max_media_seconds
            if not 0 < samples.size <= longest * AUDIO_RATE:  # bounded as a request's (R27)
                raise RequestError(AUDIO_SAMPLES.name, f"has {samples.size} samples; 1 to {longest:g} s allowed")
            return response({AUDIO_FEATURES.name: self._features(samples)})

        return per_request(requests, from_entry(one))
