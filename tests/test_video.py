import shutil

import numpy as np
import pytest
from conftest import ffprobe

from wan_triton.video import decode_mp4, encode_mp4


def frames(count=9, height=32, width=48, seed=0):
    return np.random.default_rng(seed).random((count, height, width, 3), dtype=np.float32)


def test_round_trip_keeps_count_size_and_fps():
    data = encode_mp4(frames(), fps=12)
    decoded, fps = decode_mp4(data)
    assert decoded.shape == (9, 32, 48, 3) and fps == 12


def test_bytes_are_reproducible_and_index_is_first():
    a, b = encode_mp4(frames(), 16), encode_mp4(frames(), 16)
    assert a == b
    assert a.index(b"moov") < a.index(b"mdat"), "+faststart puts the index before the media"
    assert encode_mp4(frames(seed=1), 16) != a


def test_smooth_content_survives_the_encode():
    ramp = np.linspace(0, 1, 48, dtype=np.float32)[None, None, :, None] * np.ones((5, 32, 1, 3), np.float32)
    decoded, _ = decode_mp4(encode_mp4(ramp, 16))
    assert np.abs(decoded / 255.0 - ramp).max() < 0.05


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="needs Debian's ffmpeg (installed by .ci/run)")
def test_ffprobe_agrees(tmp_path):
    stream = ffprobe(encode_mp4(frames(13), fps=24), tmp_path)
    assert (stream["codec_name"], stream["pix_fmt"]) == ("h264", "yuv420p")
    assert (stream["width"], stream["height"], stream["nb_read_frames"]) == (48, 32, "13")
    assert stream["r_frame_rate"] == "24/1"


def test_odd_sizes_and_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="even"):
        encode_mp4(frames(height=33), 16)
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        encode_mp4(np.zeros((2, 8, 8), np.uint8), 16)
