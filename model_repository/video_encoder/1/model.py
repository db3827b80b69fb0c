"""Triton Python-backend entry point; the model lives in wan_triton.serving.video_encoder."""

from wan_triton.serving.video_encoder import VideoEncoderModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
