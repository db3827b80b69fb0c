"""Triton Python-backend entry point; the model lives in wan_triton.serving.entry."""

from wan_triton.serving.entry import StreamEntryModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
