"""Checkpoints users have on disk, and random stand-ins for them in the same format."""

from wan_triton.checkpoints.tiny import SIZES, VARIANTS, build_checkpoint, build_lora

__all__ = ["SIZES", "VARIANTS", "build_checkpoint", "build_lora"]
