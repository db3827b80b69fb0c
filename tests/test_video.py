import io
import shutil

import av
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


def tone(seconds: float, rate: int) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * 440 * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


@pytest.mark.parametrize("seconds", [0.3, 0.75, 2.0], ids=["padded", "exact", "trimmed"])
def test_audio_track_is_aac_as_long_as_the_video(seconds):
    data = encode_mp4(frames(9), 12, tone(seconds, 16000), 16000)
    with av.open(io.BytesIO(data)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (audio.codec_context.name, audio.sample_rate, audio.channels) == ("aac", 16000, 1)
        video_s, audio_s = float(video.duration * video.time_base), float(audio.duration * audio.time_base)
        assert video_s == 0.75 and abs(audio_s - video_s) <= 1024 / 16000, "within one AAC frame"
        samples = np.concatenate([frame.to_ndarray()[0] for frame in container.decode(audio)])
    kept = round(min(seconds, 0.75) * 16000)
    assert np.corrcoef(samples[1000 : kept - 1000], tone(seconds, 16000)[1000 : kept - 1000])[0, 1] > 0.95
    if seconds < 0.75:
        assert np.abs(samples[kept + 1000 : 12000]).max() < 0.02, "padded with silence"
    assert decode_mp4(data)[0].shape == (9, 32, 48, 3)


def test_audio_bytes_are_reproducible():
    a, b = (encode_mp4(frames(), 16, tone(1.0, 24000), 24000) for _ in range(2))
    assert a == b
    assert encode_mp4(frames(), 16, tone(0.5, 24000), 24000) != a


def test_bad_audio_is_refused():
    with pytest.raises(ValueError, match="mono"):
        encode_mp4(frames(), 16, np.zeros((2, 100), np.float32), 16000)
    with pytest.raises(ValueError, match="sample rate"):
        encode_mp4(frames(), 16, np.zeros(100, np.float32), 0)
