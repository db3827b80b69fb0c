"""Triton Python-backend entry point; the model lives in wan_triton.serving.image_encoder."""

from wan_triton.serving.image_encoder import ImageEncoderModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
