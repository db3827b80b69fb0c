"""Triton Python-backend entry point; the model lives in wan_triton.serving.text_encoder."""

from wan_triton.serving.text_encoder import TextEncoderModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
