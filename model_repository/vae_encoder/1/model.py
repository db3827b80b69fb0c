"""Triton Python-backend entry point; the model lives in wan_triton.serving.vae."""

from wan_triton.serving.vae import VaeEncoderModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
