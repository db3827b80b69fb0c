"""Triton Python-backend entry point; the model lives in wan_triton.serving.stages."""

from wan_triton.serving.stages import AudioEncoderModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
