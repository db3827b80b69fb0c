"""Untrusted media decoding (R7, R8): real files made here, tiny, in memory."""

import io
import resource
import struct
import time
import zlib
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile
from PIL import Image, ImageFile

from wan_triton import media
from wan_triton.contract import RequestError
from wan_triton.media import (
    VideoInfo,
    area_size,
    decode_audio,
    decode_image,
    decode_video,
    fit_frames,
    frames_for_duration,
    probe_video,
)
from wan_triton.video import encode_mp4

IMAGE_CAPS = {"max_bytes": 1_000_000, "max_pixels": 1_000_000}
VIDEO_CAPS = {"max_bytes": 1_000_000, "max_pixels": 1_000_000, "max_frames": 30, "max_seconds": 10.0}
AUDIO_CAPS = {"max_bytes": 1_000_000, "max_seconds": 10.0, "sample_rate": 16000}
BACKENDS = ["pyav", pytest.param("decord", marks=pytest.mark.skipif(not media._decord_available(), reason="no decord"))]


def has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:
        return False
    return True


# ----------------------------------------------------------------------------------------------- images


def halves(height=24, width=40) -> np.ndarray:
    """Left half red, right half blue: flat areas that survive lossy codecs."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (220, 30, 30)
    pixels[:, width // 2 :] = (30, 30, 220)
    return pixels


def save(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def noise_png(size=64) -> bytes:
    """Incompressible, so cutting it in half cuts the pixel data."""
    return save(Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), np.uint8)), "PNG")


@pytest.mark.parametrize(("format", "tolerance"), [("PNG", 0), ("JPEG", 12), ("WEBP", 12)])
def test_allowed_images_decode_to_rgb(format, tolerance):
    decoded = decode_image(save(Image.fromarray(halves()), format, quality=95), **IMAGE_CAPS)
    assert decoded.shape == (24, 40, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - halves()).mean() <= tolerance


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "I;16"])
def test_other_modes_become_rgb(mode):
    decoded = decode_image(save(Image.fromarray(halves()).convert(mode), "PNG"), **IMAGE_CAPS)
    assert decoded.shape == (24, 40, 3) and decoded.dtype == np.uint8


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90° clockwise: portrait
    decoded = decode_image(save(Image.fromarray(halves()), "JPEG", exif=exif), **IMAGE_CAPS)
    assert decoded.shape == (40, 24, 3)
    assert decoded[:20].mean(axis=(0, 1))[0] > 150, "red (the stored left half) is on top after the rotation"


def test_animated_webp_gives_its_first_frame():
    red, blue = (Image.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 0, 255)))
    data = save(red, "WEBP", save_all=True, append_images=[blue], lossless=True)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert decode_image(data, **IMAGE_CAPS)[..., 0].min() == 255


@pytest.mark.parametrize("format", ["GIF", "BMP", "TIFF"])
def test_other_image_formats_are_refused(format):
    with pytest.raises(RequestError, match=f"image: format {format} is not allowed; allowed: PNG, JPEG, WEBP"):
        decode_image(save(Image.fromarray(halves()), format), **IMAGE_CAPS)


def test_random_bytes_and_other_kinds_are_not_images():
    with pytest.raises(RequestError, match="image: is not a recognized image; allowed: PNG, JPEG, WEBP"):
        decode_image(np.random.default_rng(0).bytes(1000), **IMAGE_CAPS)
    with pytest.raises(RequestError, match="format MP4 is not allowed"):
        decode_image(encode_mp4(np.zeros((1, 16, 16, 3), np.uint8), 8), **IMAGE_CAPS)


@pytest.mark.parametrize("format", ["PNG", "JPEG", "WEBP"])
def test_truncated_images_are_refused(format):
    data = noise_png() if format == "PNG" else save(Image.open(io.BytesIO(noise_png())), format, quality=95)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(RequestError, match="image: could not be decoded"):
        decode_image(data[: len(data) // 2], **IMAGE_CAPS)


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG whose IHDR declares width x height, with a few bytes of IDAT: a decompression bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("side", "message"), [(100_000, "declares too many pixels"), (8_000, "is 8000x8000 = ")])
def test_png_bomb_is_refused_from_its_header(monkeypatch, side, message):
    # 100000² trips Pillow's own DecompressionBombError at open(); 8000² (below Pillow's limit) our cap.
    loads = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(RequestError, match=f"image: {message}.*at most 1000000 allowed"):
        decode_image(png_declaring(side, side), **IMAGE_CAPS)
    assert time.perf_counter() - start < 1.0
    assert loads == [], "refused before any pixel was decoded"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100_000  # KiB: no 192 MB buffer


def test_image_caps():
    data = save(Image.fromarray(halves()), "PNG")
    with pytest.raises(RequestError, match=f"image: is {len(data)} bytes; at most 100 allowed"):
        decode_image(data, max_bytes=100, max_pixels=10**6)
    with pytest.raises(RequestError, match="photo: is 40x24 = 960 pixels; at most 959 allowed"):
        decode_image(data, max_bytes=10**6, max_pixels=959, field="photo")
    with pytest.raises(RequestError, match="image: is empty"):
        decode_image(b"", **IMAGE_CAPS)


# ----------------------------------------------------------------------------------------------- videos


def clip(count=9, height=32, width=64) -> np.ndarray:
    """Frames of two flat halves whose brightness steps with the frame index, so order is visible."""
    frames = np.zeros((count, height, width, 3), np.uint8)
    for index in range(count):
        frames[index, :, : width // 2] = (200, 40 + 10 * index, 40)
        frames[index, :, width // 2 :] = (40, 40, 200)
    return frames


def write_video(frames: np.ndarray, fps: int, format: str, codec: str, pix_fmt="yuv420p") -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=format) as container:
        stream = container.add_stream(codec, rate=Fraction(fps, 1))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return buffer.getvalue()


VP9 = "libvpx-vp9" if has_encoder("libvpx-vp9") else "libvpx"
VIDEOS = {
    "mp4": lambda: encode_mp4(clip(), 12),
    "webm": lambda: write_video(clip(), 12, "webm", VP9),
    "mov": lambda: write_video(clip(), 12, "mov", "libx264"),
}


@pytest.mark.parametrize("container", VIDEOS)
def test_probe_reads_the_header(container):
    assert probe_video(VIDEOS[container](), max_bytes=10**6) == VideoInfo(64, 32, 9, 12.0, 0.75, container)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("container", VIDEOS)
def test_allowed_videos_decode(container, backend):
    frames, fps = decode_video(VIDEOS[container](), **VIDEO_CAPS, backend=backend)
    assert frames.shape == (9, 32, 64, 3) and frames.dtype == np.uint8 and fps == 12.0
    assert np.abs(frames.astype(int) - clip()).mean() < 4


@pytest.mark.skipif(not media._decord_available(), reason="no decord")
def test_decord_and_pyav_give_identical_frames():
    data = encode_mp4(np.random.default_rng(0).random((9, 32, 64, 3), dtype=np.float32), 12)
    by_decord, _ = decode_video(data, **VIDEO_CAPS, backend="decord")
    by_pyav, _ = decode_video(data, **VIDEO_CAPS, backend="pyav")
    assert np.array_equal(by_decord, by_pyav)


@pytest.mark.skipif(not media._decord_available(), reason="no decord")
def test_decord_narrow_width_bug_falls_back_to_pyav():
    # decord 0.6 fails on width 48 (it reads the padded RGB rows as 4 channels); PyAV then decodes.
    data = encode_mp4(clip(width=48), 12)
    with pytest.raises(Exception, match="size must exactly match"):
        media._decode_decord(data, probe_video(data, max_bytes=10**6), 9)
    frames, _ = decode_video(data, **VIDEO_CAPS, backend="decord")
    assert np.array_equal(frames, decode_video(data, **VIDEO_CAPS, backend="pyav")[0])


def test_frame_counts():
    data = VIDEOS["mp4"]()
    assert decode_video(data, **VIDEO_CAPS, num_frames=5)[0].shape[0] == 5
    assert decode_video(data, **{**VIDEO_CAPS, "max_frames": 4})[0].shape[0] == 4, "capped even without num_frames"
    with pytest.raises(RequestError, match="video: has 9 frames; 20 needed"):
        decode_video(data, **VIDEO_CAPS, num_frames=20)
    with pytest.raises(RequestError, match="31 frames asked for; between 1 and 30 allowed"):
        decode_video(data, **VIDEO_CAPS, num_frames=31)


def test_webm_frame_count_comes_from_duration():
    with av.open(io.BytesIO(VIDEOS["webm"]())) as container:
        assert container.streams.video[0].frames == 0, "WebM stores no frame count"
    assert probe_video(VIDEOS["webm"](), max_bytes=10**6).frames == 9


def test_caps_refuse_before_decoding(monkeypatch):
    def never(*args):
        raise AssertionError("decoded a refused video")

    monkeypatch.setattr(media, "_decode_pyav", never)
    monkeypatch.setattr(media, "_decode_decord", never)
    data = VIDEOS["mp4"]()
    with pytest.raises(RequestError, match="video: is 64x32 = 2048 pixels; at most 2047 allowed"):
        decode_video(data, **{**VIDEO_CAPS, "max_pixels": 2047})
    with pytest.raises(RequestError, match=r"video: is 0\.75 s long; at most 0\.5 s allowed"):
        decode_video(data, **{**VIDEO_CAPS, "max_seconds": 0.5})
    with pytest.raises(RequestError, match=f"clip: is {len(data)} bytes; at most 1000 allowed"):
        decode_video(data, **{**VIDEO_CAPS, "max_bytes": 1000}, field="clip")


def test_wrong_kinds_are_not_videos():
    png = save(Image.fromarray(halves()), "PNG")
    with pytest.raises(RequestError, match="video: format PNG is not allowed; allowed: MP4, WebM, MOV"):
        probe_video(png, max_bytes=10**6)
    with pytest.raises(RequestError, match="video: is not a recognized video; allowed: MP4, WebM, MOV"):
        decode_video(np.random.default_rng(0).bytes(5000), **VIDEO_CAPS)
    with pytest.raises(RequestError, match="video: format Matroska is not allowed"):
        probe_video(write_video(clip(), 12, "matroska", "libx264"), max_bytes=10**6)
    with pytest.raises(RequestError, match="video: codec mjpeg is not allowed; allowed: h264, "):
        probe_video(write_video(clip(), 12, "mov", "mjpeg", "yuvj420p"), max_bytes=10**6)


def test_audio_only_mp4_has_no_video_stream():
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 4096), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(RequestError, match="video: MP4 file has no video stream"):
        probe_video(buffer.getvalue(), max_bytes=10**6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("container", VIDEOS)
def test_truncated_videos_are_refused(container, backend):
    # Noise, so the cut falls in the media rather than the header (a cut WebM demuxes without an error).
    noise = np.random.default_rng(0).integers(0, 255, (20, 32, 64, 3), np.uint8)
    codec = VP9 if container == "webm" else "libx264"
    data = encode_mp4(noise, 12) if container == "mp4" else write_video(noise, 12, container, codec)
    with pytest.raises(RequestError, match="video: could not be decoded"):
        decode_video(data[: len(data) // 2], **VIDEO_CAPS, backend=backend)


# ----------------------------------------------------------------------------------------------- audio

RATE = 22050


def tone(seconds=0.5, rate=RATE, hz=440.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


def write_sound(format: str, subtype: str | None = None, samples=None, rate=RATE) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(rate=rate) if samples is None else samples, rate, format=format, subtype=subtype)
    return buffer.getvalue()


def write_mp3() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(tone()[None], format="fltp", layout="mono")
        frame.sample_rate = RATE
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


MP3 = pytest.mark.skipif(not has_encoder("libmp3lame"), reason="PyAV's FFmpeg has no libmp3lame to make an MP3")
SOUNDS = {
    "wav": lambda: write_sound("WAV"),
    "flac": lambda: write_sound("FLAC"),
    "vorbis": lambda: write_sound("OGG", "VORBIS"),
    "opus": lambda: write_sound("OGG", "OPUS", tone(rate=48000), 48000),
    "mp3": write_mp3,
}
SOUND_PARAMS = [pytest.param(name, marks=MP3) if name == "mp3" else name for name in SOUNDS]


def peak_hz(samples: np.ndarray, rate: int) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(samples))) * rate / len(samples))


@pytest.mark.parametrize("kind", SOUND_PARAMS)
def test_allowed_audio_decodes_to_mono_at_the_rate(kind):
    samples = decode_audio(SOUNDS[kind](), **AUDIO_CAPS)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - 8000) <= 2, "0.5 s at 16 kHz"
    assert abs(peak_hz(samples, 16000) - 440) <= 4
    assert 0.3 < np.abs(samples).max() < 0.7


def test_stereo_is_averaged():
    stereo = np.stack([tone(), -tone()], axis=1) + 0.25  # the channels cancel but for the offset
    samples = decode_audio(write_sound("WAV", samples=stereo), **{**AUDIO_CAPS, "sample_rate": RATE})
    assert np.allclose(samples, 0.25, atol=1e-3)


@pytest.mark.parametrize("kind", SOUND_PARAMS)
def test_truncated_audio_is_refused(kind):
    data = SOUNDS[kind]()
    with pytest.raises(RequestError, match="audio: could not be decoded"):
        decode_audio(data[: len(data) // 2], **AUDIO_CAPS)


def test_wrong_kinds_are_not_audio():
    png = save(Image.fromarray(halves()), "PNG")
    with pytest.raises(RequestError, match="audio: format PNG is not allowed; allowed: WAV, FLAC, MP3, OGG"):
        decode_audio(png, **AUDIO_CAPS)
    with pytest.raises(RequestError, match="audio: is not a recognized audio file; allowed: WAV, FLAC, MP3, OGG"):
        decode_audio(write_sound("AIFF"), **AUDIO_CAPS)
    with pytest.raises(RequestError, match="audio: "):
        decode_audio(np.random.default_rng(1).bytes(3000), **AUDIO_CAPS)
    with pytest.raises(RequestError, match="format MP4 is not allowed"):
        decode_audio(encode_mp4(np.zeros((1, 16, 16, 3), np.uint8), 8), **AUDIO_CAPS)


def test_audio_caps():
    data = SOUNDS["flac"]()
    with pytest.raises(RequestError, match=r"speech: is 0\.50 s long; at most 0\.25 s allowed"):
        decode_audio(data, **{**AUDIO_CAPS, "max_seconds": 0.25}, field="speech")
    with pytest.raises(RequestError, match=f"audio: is {len(data)} bytes; at most 100 allowed"):
        decode_audio(data, **{**AUDIO_CAPS, "max_bytes": 100})


# ----------------------------------------------------------------------------------------------- sizing


def test_area_size_follows_the_diffusers_example():
    assert area_size(480, 832, 480 * 832, 16) == (480, 832)
    assert area_size(1080, 1920, 480 * 832, 16) == (464, 832)
    assert area_size(1920, 1080, 480 * 832, 16) == (832, 464)
    assert area_size(720, 1280, 720 * 1280, 16) == (720, 1280)
    assert area_size(1, 1000, 100, 16) == (16, 304), "never below one multiple"


def test_fit_frames_covers_then_crops_the_center():
    image = halves(32, 64)
    assert fit_frames(image, 32, 64) is image, "the right size is a no-op"
    square = fit_frames(image, 16, 16)  # 64 wide -> 32, crop 8 each side: still half red, half blue
    assert square.shape == (16, 16, 3)
    assert square[:, :6, 0].min() > 200 and square[:, 10:, 2].min() > 200
    tall = np.zeros((2, 64, 32, 3), np.uint8)
    tall[:, 32:] = 255  # top black, bottom white; 16 high x 32 wide keeps rows 24..40, the middle
    fitted = fit_frames(tall, 16, 32)
    assert fitted.shape == (2, 16, 32, 3)
    assert fitted[:, :6].max() < 10 and fitted[:, 10:].min() > 245
    assert fit_frames(clip(3, 32, 64), 48, 64).shape == (3, 48, 64, 3), "upscaling too"


def test_frames_for_duration_rounds_up_to_the_grid():
    assert frames_for_duration(1.0, 16, 4, 81) == 17
    assert frames_for_duration(5.0, 16, 4, 81) == 81
    assert frames_for_duration(0.01, 16, 4, 81) == 1
    assert frames_for_duration(1.07, 16, 4, 81) == 21, "17.1 frames: 18, on the grid 21"
    assert frames_for_duration(0.1 * 3, 10, 4, 81) == 5, "0.30000000000000004 s is 3 frames, not 4"
    with pytest.raises(RequestError, match=r"audio: is 5\.07 s = 85 frames at 16 fps; at most 81 frames \(5\.06 s\)"):
        frames_for_duration(5.07, 16, 4, 81)
    with pytest.raises(RequestError, match=r"audio: has a duration of 0\.0 s"):
        frames_for_duration(0.0, 16, 4, 81)


# ----------------------------------------------------------------------------------------- decode bombs (R28)


def flat_video(count: int, side: int) -> bytes:
    """A flat grey MP4 that compresses to ~50 KB whatever its size: small bytes, huge frames."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(8, 1), options={"preset": "ultrafast"})
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.full((side, side, 3), 90, np.uint8), format="rgb24")
        for _ in range(count):
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


BOMB_CAPS = {"max_bytes": 1_000_000, "max_pixels": 4096 * 4096, "max_frames": 161, "max_seconds": 600.0}


def peak_bytes(work) -> tuple[object, int]:
    """What `work` returns and the most memory numpy (and anything else traced) held meanwhile."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = work()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_small_video_of_huge_frames_is_refused_before_decoding():
    """The review's bomb: ~50 KB of MP4, 33 frames of 4096^2 = 1.66 GB decoded."""
    data = flat_video(33, 4096)
    assert len(data) < 100_000
    with pytest.raises(RequestError, match=r"video: would decode to 1660944384 bytes \(33 frames of 4096x4096\)"):
        decode_video(data, **BOMB_CAPS, max_decoded_bytes=1 << 30)

    def refused() -> None:
        with pytest.raises(RequestError):
            decode_video(data, **BOMB_CAPS, max_decoded_bytes=1 << 30)

    _, peak = peak_bytes(refused)
    assert peak < 10 << 20, "refused from the header: no frame decoded"


def test_frames_are_fitted_one_by_one_as_they_decode():
    """Decoding to the output size holds one source frame at a time, never all of them, and gives
    exactly what fitting the whole decoded clip gives."""
    data = flat_video(9, 2048)
    source_frame = 2048 * 2048 * 3
    (fitted, _), peak = peak_bytes(lambda: decode_video(data, **BOMB_CAPS, size=(32, 48)))
    assert fitted.shape == (9, 32, 48, 3)
    assert peak < 3 * source_frame, f"{peak} bytes held; all nine frames would be {9 * source_frame}"
    whole, _ = decode_video(data, **BOMB_CAPS)
    assert np.array_equal(fitted, fit_frames(whole, 32, 48))


def test_audio_decodes_only_as_far_as_asked_and_its_decoded_size_is_capped():
    rate, channels = 96_000, 8
    samples = np.zeros((20 * rate, channels), np.float32)
    samples[:, 0] = np.sin(np.arange(20 * rate) * 2 * np.pi * 440 / rate)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="FLAC")
    data = buffer.getvalue()
    caps = {"max_bytes": 50 << 20, "max_seconds": 600.0, "sample_rate": 16000}
    with pytest.raises(RequestError, match=r"audio: would decode to 61440000 bytes \(20.00 s of 8 channels"):
        decode_audio(data, **caps, max_decoded_bytes=10 << 20)
    whole = decode_audio(data, **caps)  # (also imports what decoding needs before measuring)
    mono, peak = peak_bytes(lambda: decode_audio(data, **caps, until_s=1.0, max_decoded_bytes=10 << 20))
    assert abs(len(mono) - 16000) <= 2
    assert peak < 8 << 20, f"{peak} bytes for one second; the whole file is {20 * rate * channels * 4} decoded"
    assert len(whole) == 20 * 16000 and np.allclose(mono[:8000], whole[:8000], atol=1e-3)
