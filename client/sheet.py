"""A contact sheet: sampled frames of an MP4 in one PNG grid, to see a video at a glance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from wan_triton.video import decode_mp4


def contact_sheet(video: bytes, path: str | Path, count: int = 8, columns: int = 4) -> Path:
    frames, _ = decode_mp4(video)
    picks = frames[np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)]
    rows = -(-len(picks) // columns)
    height, width = picks.shape[1:3]
    sheet = np.zeros((rows * height, min(columns, len(picks)) * width, 3), np.uint8)
    for index, frame in enumerate(picks):
        row, column = divmod(index, columns)
        sheet[row * height : (row + 1) * height, column * width : (column + 1) * width] = frame
    Image.fromarray(sheet).save(path, format="PNG")
    return Path(path)
