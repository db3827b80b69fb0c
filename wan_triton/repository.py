"""The model repository's names, defined once: Triton model names and where artifacts live."""

from __future__ import annotations

from pathlib import Path

from wan_triton.contract import ANIMATE, IMAGE_TO_VIDEO, SPEECH_TO_VIDEO, TEXT_TO_VIDEO, VACE, VIDEO_TO_VIDEO

TEXT_ENCODER = "text_encoder"
DENOISER = "denoiser"
VAE_DECODER = "vae_decoder"
VAE_ENCODER = "vae_encoder"
IMAGE_ENCODER = "image_encoder"  # Wan2.1 I2V: CLIP vision tower, penultimate hidden states
AUDIO_ENCODER = "audio_encoder"  # Wan2.2-S2V: wav2vec2's hidden states, per video frame
VIDEO_ENCODER = "video_encoder"
T2V = "wan_t2v"  # the entry clients call
T2V_STREAM = "wan_t2v_stream"  # the same, decoupled: progress per step, then the video
I2V, I2V_STREAM = "wan_i2v", "wan_i2v_stream"  # an image (and a prompt) to video
V2V, V2V_STREAM = "wan_v2v", "wan_v2v_stream"  # a video (and a prompt) to video, with a strength
# Wan VACE: reference images, a control or source video and a mask (all optional) to video.
VACE_ENTRY, VACE_STREAM = "wan_vace", "wan_vace_stream"
# Wan2.2 Animate: a character image driven by pose and face videos.
ANIMATE_ENTRY, ANIMATE_STREAM = "wan_animate", "wan_animate_stream"
# Wan2.2-S2V: a reference image driven by speech (and optionally a pose video).
S2V_ENTRY, S2V_STREAM = "wan_s2v", "wan_s2v_stream"
# Each task's entry models: (plain, streaming).
ENTRY_MODELS: dict[str, tuple[str, str]] = {
    TEXT_TO_VIDEO: (T2V, T2V_STREAM),
    IMAGE_TO_VIDEO: (I2V, I2V_STREAM),
    VIDEO_TO_VIDEO: (V2V, V2V_STREAM),
    VACE: (VACE_ENTRY, VACE_STREAM),
    ANIMATE: (ANIMATE_ENTRY, ANIMATE_STREAM),
    SPEECH_TO_VIDEO: (S2V_ENTRY, S2V_STREAM),
}

# Exported graphs per model: the text encoder is one graph; each VAE part is a first-chunk
# graph and a steady-chunk graph (see wan_triton.pipeline.vae).
ONNX_FILES: dict[str, dict[str, str]] = {
    TEXT_ENCODER: {"model": "model.onnx"},
    IMAGE_ENCODER: {"model": "model.onnx"},
    AUDIO_ENCODER: {"model": "model.onnx"},
    VAE_DECODER: {"first": "first.onnx", "step": "step.onnx"},
    VAE_ENCODER: {"first": "first.onnx", "step": "step.onnx"},
}
MANIFEST = "manifest.json"
# Tensor names inside the exported text-encoder graph (the VAE graphs: see export/parts.py).
TEXT_GRAPH_INPUTS = ("input_ids", "attention_mask")
TEXT_GRAPH_OUTPUT = "last_hidden_state"
AUDIO_GRAPH_INPUT, AUDIO_GRAPH_OUTPUT = "input_values", "hidden_states"  # 16 kHz samples; stacked [layers, T, dim]


def version_dir(repository: str | Path, model: str, version: int = 1) -> Path:
    return Path(repository) / model / str(version)
