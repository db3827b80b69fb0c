"""Triton Python-backend entry point; the model lives in wan_triton.serving.denoiser."""

from wan_triton.serving.denoiser import DenoiserModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
