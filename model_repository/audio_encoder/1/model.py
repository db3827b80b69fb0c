"""Triton Python-backend entry point; the model lives in wan_triton.serving.audio_encoder."""

from wan_triton.serving.audio_encoder import AudioEncoderModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
