"""Which loader a checkpoint folder takes: the diffusers layout (`checkpoint.Checkpoint`) or Wan2.2-S2V's
release layout (`s2v.release.Release`), which loads its parts by the same methods. Apart from both, so that
neither imports the other's module."""

from __future__ import annotations

import os
from pathlib import Path

from wan_triton.contract import is_s2v_release
from wan_triton.pipeline.checkpoint import Checkpoint
from wan_triton.s2v.release import Release


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The folder's checkpoint, in whichever of the two layouts it is."""
    return Release.open(path) if is_s2v_release(Path(path).expanduser()) else Checkpoint.open(path)
