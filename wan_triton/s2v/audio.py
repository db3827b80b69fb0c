"""Wan2.2-S2V's audio features: what the transformer's audio encoder takes, per clip.

The release's recipe, step by step (`Wan-AI/Wan2.2-S2V-14B` runs `wav2vec2-large-xlsr-53-english`):
1. the waveform, mono, at wav2vec2's 16 kHz, normalised to zero mean and unit variance (its feature
   extractor's `do_normalize`);
2. every hidden state of wav2vec2 (the embeddings' and each layer's), stacked: [layers + 1, T, dim] at
   50 frames a second;
3. resampled linearly to 30 frames a second;
4. one of those per video frame at the video's fps (16), zeros past the end of the audio, in clips of
   80 video frames (the last one padded).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from wan_triton.s2v.clips import CLIP_FRAMES, FPS

SAMPLE_RATE = 16_000  # wav2vec2's
FEATURE_RATE = 50  # wav2vec2's frames a second: one per 320 samples
RESAMPLED_RATE = 30  # the release resamples features to this before picking one per video frame


def normalised(samples: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance, as wav2vec2's feature extractor does (`do_normalize`)."""
    samples = np.asarray(samples, dtype=np.float32)
    return (samples - samples.mean()) / np.sqrt(samples.var() + 1e-7)


def at_sample_rate(samples: np.ndarray, rate: int) -> np.ndarray:
    """Mono `samples` at `rate` -> at wav2vec2's `SAMPLE_RATE` (librosa's default resampler, soxr_hq)."""
    import librosa

    samples = np.asarray(samples, dtype=np.float32)
    return samples if rate == SAMPLE_RATE else librosa.resample(samples, orig_sr=rate, target_sr=SAMPLE_RATE)


class StackedHiddenStates(torch.nn.Module):
    """wav2vec2 (`transformers.Wav2Vec2Model`) as the graph the `audio_encoder` stage runs: normalised 16 kHz
    samples [1, S] -> every hidden state, stacked, [layers + 1, T, dim] at `FEATURE_RATE`."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.model(input_values, output_hidden_states=True).hidden_states)


@torch.inference_mode()
def hidden_states(model, samples: np.ndarray) -> torch.Tensor:
    """wav2vec2 on 16 kHz mono `samples`: every hidden state, stacked, [layers + 1, T, dim] at `FEATURE_RATE`."""
    parameter = next(model.parameters())
    values = torch.from_numpy(normalised(samples))[None].to(parameter.device, parameter.dtype)
    return StackedHiddenStates(model)(values)


def resampled(features: torch.Tensor) -> torch.Tensor:
    """[L, T, D] at `FEATURE_RATE` -> [L, T', D] at `RESAMPLED_RATE` (linear, ends aligned)."""
    frames = int(features.shape[1] / FEATURE_RATE * RESAMPLED_RATE)
    return F.interpolate(features.transpose(1, 2), size=frames, mode="linear", align_corners=True).transpose(1, 2)


def clip_count(features: torch.Tensor, fps: int) -> int:
    """Clips of `CLIP_FRAMES` the release generates for [L, T, D] at `RESAMPLED_RATE`: one more than the
    whole clips the audio fills (so a last partial clip, or an empty one for audio that fills whole clips)."""
    return int(features.shape[1] / (CLIP_FRAMES * RESAMPLED_RATE / fps)) + 1


def per_video_frame(features: torch.Tensor, fps: int) -> torch.Tensor:
    """[L, T, D] at `RESAMPLED_RATE` -> [L, D, clips * CLIP_FRAMES]: the feature nearest each video frame's
    start time, zeros past the end of the audio."""
    layers, frames, dim = features.shape
    count = clip_count(features, fps) * CLIP_FRAMES
    times = np.linspace(0.0, count / fps, count, endpoint=False)
    padded = math.ceil(count / fps * RESAMPLED_RATE)
    index = torch.from_numpy(np.clip(np.round(times * RESAMPLED_RATE).astype(int), 0, padded - 1))
    picked = features.new_zeros(layers, count, dim)
    inside = index < frames
    picked[:, inside] = features[:, index[inside]]
    return picked.transpose(1, 2)


def per_frame(hidden: torch.Tensor, fps: int) -> torch.Tensor:
    """Stacked hidden states [L, T, D] at `FEATURE_RATE` -> the transformer's audio input for every video frame
    of whole clips, [1, L, D, clips * CLIP_FRAMES]."""
    return per_video_frame(resampled(hidden.float()), fps)[None]


def features(samples: np.ndarray, rate: int, hidden: Callable[[np.ndarray], torch.Tensor]) -> np.ndarray:
    """Mono `samples` at `rate` -> the transformer's audio input for every video frame of whole clips at the
    release's fps, [1, L, D, clips * CLIP_FRAMES]; `hidden` runs wav2vec2 (torch or its exported graph) on
    normalised 16 kHz samples [1, S] to the stacked hidden states [L, T, D]."""
    return per_frame(hidden(normalised(at_sample_rate(samples, rate))[None]), FPS).numpy()


def torch_hidden(model) -> Callable[[np.ndarray], torch.Tensor]:
    """`features`' `hidden` for a loaded wav2vec2."""
    parameter = next(model.parameters())

    @torch.inference_mode()
    def hidden(values: np.ndarray) -> torch.Tensor:
        return StackedHiddenStates(model)(torch.from_numpy(values).to(parameter.device, parameter.dtype))

    return hidden


def clips(model, samples: np.ndarray, fps: int = 16) -> list[torch.Tensor]:
    """The transformer's audio input for each clip, [1, layers + 1, dim, CLIP_FRAMES]."""
    return list(per_frame(hidden_states(model, samples), fps).split(CLIP_FRAMES, dim=-1))
