"""Untrusted image/video/audio inputs -> numpy arrays, refused early and explicitly (R7, R8).

Torch-free (numpy, Pillow, PyAV, soundfile/librosa, optionally decord). Every refusal is a RequestError
whose message says what is allowed. The order is always: byte cap, kind sniffed from magic bytes against
an allow-list, sizes/durations from the header against the caller's caps, the decoded size those imply
against its cap (R28), and only then decoding, with only the allow-listed parser ever touching the bytes:
video frames are fitted to the output size one by one as they decode, audio is mixed to mono block by
block and decoded only as far as it is used. Nothing here opens a file name or URL from the input.

Request media are decoded with PyAV only (a current FFmpeg with the demuxer forced); decord (an FFmpeg
of 2018 that probes formats itself) is for trusted local files, and only when asked for.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image, ImageOps

from wan_triton.contract import RequestError

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
VIDEO_CONTAINERS = ("MP4", "WebM", "MOV")
# Codecs PyAV's FFmpeg decodes natively; anything else in an allowed container is refused.
VIDEO_CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4")
AUDIO_FORMATS = ("WAV", "FLAC", "MP3", "OGG")
# soundfile's names for what AUDIO_FORMATS allows (WAVEX is WAV with the extensible header).
SOUNDFILE_FORMATS = {"WAV": "WAV", "WAVEX": "WAV", "FLAC": "FLAC", "MP3": "MP3", "OGG": "OGG"}
OGG_CODECS = ("VORBIS", "OPUS")
# Sample rate and channel bounds: with the duration cap they bound the decoded size, which a compressed
# file (FLAC of silence) does not.
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 8
# Frames of slack when checking an MP3's header frame count against what decodes (encoder delay/padding).
MP3_SLACK = 2 * 1152


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    frames: int
    fps: float
    duration_s: float
    container: str  # "mp4", "mov" or "webm"


def _check_decoded(field: str, what: str, decoded: int, max_decoded_bytes: int | None) -> None:
    if max_decoded_bytes is not None and decoded > max_decoded_bytes:
        raise RequestError(
            field,
            f"would decode to {decoded} bytes ({what}); at most {max_decoded_bytes} allowed (max_media_decoded_bytes)",
        )


def _allowed(names: tuple[str, ...]) -> str:
    return ", ".join(names)


def _check_bytes(data: bytes, max_bytes: int, field: str) -> None:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise RequestError(field, f"must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise RequestError(field, f"is {len(data)} bytes; at most {max_bytes} allowed")
    if not data:
        raise RequestError(field, "is empty")


def _ebml_doctype(data: bytes) -> bytes | None:
    """The DocType ("webm" or "matroska") of an EBML header: element 0x4282, then a variable-length size."""
    at = data.find(b"\x42\x82", 4, 64)
    if at < 0 or at + 2 >= len(data):
        return None
    first = data[at + 2]
    length = 8 - first.bit_length() + 1  # a vint's length is its count of leading zero bits + 1
    if not 1 <= length <= 8:
        return None
    size = int.from_bytes(data[at + 2 : at + 2 + length], "big") & ((1 << (7 * length)) - 1)
    start = at + 2 + length
    return data[start : start + size]


def sniff(data: bytes) -> str | None:
    """The kind of media from its magic bytes, as named in the messages; None when unknown."""
    head = bytes(data[:64])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] in (b"WEBP", b"WAVE", b"AVI "):
        return {b"WEBP": "WEBP", b"WAVE": "WAV", b"AVI ": "AVI"}[head[8:12]]
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:2] == b"BM":
        return "BMP"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"avif"):
            return "HEIF"
        return "MOV" if brand == b"qt  " else "MP4"
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "MOV"  # QuickTime files from before the ftyp box
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "WebM" if _ebml_doctype(head) == b"webm" else "Matroska"
    if head[:4] == b"fLaC":
        return "FLAC"
    if head[:4] == b"OggS":
        return "OGG"
    # ID3 tag, or an MPEG audio frame sync with a layer (layer bits 00 are AAC's ADTS, not MPEG audio).
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06):
        return "MP3"
    if head[:4] == b"%PDF":
        return "PDF"
    return None


def _refuse_kind(kind: str | None, allowed: tuple[str, ...], noun: str, field: str) -> RequestError:
    if kind is None:
        return RequestError(field, f"is not a recognized {noun}; allowed: {_allowed(allowed)}")
    return RequestError(field, f"format {kind} is not allowed; allowed: {_allowed(allowed)}")


# ----------------------------------------------------------------------------------------------- images


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int, field: str = "image") -> np.ndarray:
    """PNG/JPEG/WebP bytes -> uint8 [H, W, 3] RGB, EXIF orientation applied."""
    _check_bytes(data, max_bytes, field)
    kind = sniff(data)
    if kind not in IMAGE_FORMATS:
        raise _refuse_kind(kind, IMAGE_FORMATS, "image", field)
    try:
        # formats=[kind]: only the sniffed, allowed plugin parses the bytes. open() reads the header only;
        # Pillow itself raises DecompressionBombError above 2 * MAX_IMAGE_PIXELS already here.
        image = Image.open(io.BytesIO(data), formats=[kind])
    except Image.DecompressionBombError as exc:
        raise RequestError(field, f"declares too many pixels ({exc}); at most {max_pixels} allowed") from exc
    except Exception as exc:  # Pillow raises many types (SyntaxError, struct.error, ...) on bad headers
        raise RequestError(field, f"could not be decoded ({kind} header is corrupt)") from exc
    with image:
        width, height = image.size
        # Our cap, from the header and before any pixel is decoded. Pillow's own bomb limit is a warning
        # below 2 * MAX_IMAGE_PIXELS; treating it as a cap too makes that warning a refusal without
        # touching the (process-global, thread-unsafe) warnings filters.
        limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
        if width * height > limit:
            raise RequestError(field, f"is {width}x{height} = {width * height} pixels; at most {limit} allowed")
        try:
            # load() of an animated WebP/APNG decodes the first frame only, which is what we use: the
            # input is one image, and diffusers' load_image does the same with such files.
            # Truncated files raise here because ImageFile.LOAD_TRUNCATED_IMAGES stays False.
            image.load()
            # EXIF orientation applied, as diffusers' load_image does: the image as a viewer shows it,
            # which is what the user framed (phone photos store portrait as rotated landscape).
            upright = ImageOps.exif_transpose(image)
            # convert("RGB") drops alpha rather than compositing it onto a background: the same as
            # diffusers' load_image, so served and reference pipelines see the same pixels.
            return np.asarray(upright.convert("RGB"), dtype=np.uint8).copy()
        except Exception as exc:
            raise RequestError(field, f"could not be decoded (truncated or corrupt {kind})") from exc


# ----------------------------------------------------------------------------------------------- videos

# The demuxer each allowed container is opened with. Forcing it (rather than letting FFmpeg probe) keeps
# playlist-like demuxers (hls, concat, ...), which open other URLs and files, out of reach (R7).
_DEMUXERS = {"MP4": "mp4", "MOV": "mov", "WebM": "webm"}


def _open_video(data: bytes, kind: str) -> av.container.InputContainer:
    return av.open(io.BytesIO(data), mode="r", format=_DEMUXERS[kind])


def probe_video(data: bytes, *, max_bytes: int, field: str = "video") -> VideoInfo:
    """Size, frame count, fps and duration from an MP4/WebM/MOV header; nothing is decoded."""
    _check_bytes(data, max_bytes, field)
    kind = sniff(data)
    if kind not in VIDEO_CONTAINERS:
        raise _refuse_kind(kind, VIDEO_CONTAINERS, "video", field)
    try:
        with _open_video(data, kind) as container:
            if not container.streams.video:
                raise RequestError(field, f"{kind} file has no video stream")
            stream = container.streams.video[0]
            codec = stream.codec_context.name
            width, height = stream.codec_context.width, stream.codec_context.height
            fps = float(stream.average_rate or stream.guessed_rate or stream.base_rate or 0)
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                duration = 0.0
            frames = stream.frames  # 0 where the container does not store it (WebM)
    except RequestError:
        raise
    except Exception as exc:
        raise RequestError(field, "could not be decoded (truncated or not a video)") from exc
    if codec not in VIDEO_CODECS:
        raise RequestError(field, f"codec {codec} is not allowed; allowed: {_allowed(VIDEO_CODECS)}")
    if width <= 0 or height <= 0 or not math.isfinite(fps) or fps <= 0:
        raise RequestError(field, f"has no usable size or frame rate ({width}x{height} at {fps} fps)")
    if frames <= 0:
        frames = round(duration * fps)
    if duration <= 0:
        duration = frames / fps
    if frames <= 0:
        raise RequestError(field, "has no frames")
    return VideoInfo(width, height, frames, fps, duration, kind.lower())


def _decode_pyav(
    data: bytes, info: VideoInfo, count: int, field: str, size: tuple[int, int] | None
) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    with _open_video(data, {"mp4": "MP4", "mov": "MOV", "webm": "WebM"}[info.container]) as container:
        for frame in container.decode(container.streams.video[0]):
            # The header's size is what the pixel and decoded-size caps checked; a stream may change it.
            if (frame.width, frame.height) != (info.width, info.height):
                raise RequestError(
                    field,
                    f"changes size mid-stream ({info.width}x{info.height} -> "
                    f"{frame.width}x{frame.height}); not allowed",
                )
            pixels = frame.to_ndarray(format="rgb24")
            out.append(pixels if size is None else fit_frames(pixels, *size))  # one source frame at a time
            if len(out) == count:
                break
    return out


def _decode_decord(data: bytes, info: VideoInfo, count: int) -> list[np.ndarray]:
    import decord

    # VideoReader reads a file-like object from memory (it copies it into a bytearray); no temp file.
    reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0))
    batch = reader.get_batch(list(range(min(count, len(reader))))).asnumpy()
    # decord 0.6 gets some narrow widths wrong (measured over even widths 2-198: 2, 4, 6, 8, 12, 16, 24, 48
    # and 72 fail, frames come out [H, W, 4]: seemingly the padded RGB row read as 4 channels); get_batch
    # raises there, and the shape check catches any variant that does not.
    if batch.shape[1:] != (info.height, info.width, 3) or batch.dtype != np.uint8:
        raise ValueError(f"decord returned {batch.shape} {batch.dtype}")
    return list(batch)


def _decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def decode_video(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    max_frames: int,
    max_seconds: float,
    num_frames: int | None = None,
    size: tuple[int, int] | None = None,
    max_decoded_bytes: int | None = None,
    field: str = "video",
    backend: str = "pyav",
) -> tuple[np.ndarray, float]:
    """MP4/WebM/MOV bytes -> (uint8 [F, H, W, 3] RGB, fps): the first `num_frames` frames, or all up to
    `max_frames` when None; with `size` (height, width) each frame fitted to it as it decodes (fit_frames),
    so only one source-size frame is ever held. `max_decoded_bytes` caps frames x width x height x 3 at
    the source size, from the header, before any frame decodes. `backend` "decord" is for trusted local
    files only (see the module's note)."""
    info = probe_video(data, max_bytes=max_bytes, field=field)
    if info.width * info.height > max_pixels:
        raise RequestError(
            field, f"is {info.width}x{info.height} = {info.width * info.height} pixels; at most {max_pixels} allowed"
        )
    if info.duration_s > max_seconds:
        raise RequestError(field, f"is {info.duration_s:.2f} s long; at most {max_seconds:g} s allowed")
    if num_frames is not None and not 1 <= num_frames <= max_frames:
        raise RequestError(field, f"{num_frames} frames asked for; between 1 and {max_frames} allowed")
    count = max_frames if num_frames is None else num_frames
    decoded = min(count, info.frames) * info.width * info.height * 3
    _check_decoded(field, f"{min(count, info.frames)} frames of {info.width}x{info.height}", decoded, max_decoded_bytes)
    frames: list[np.ndarray] | None = None
    if backend == "decord":
        try:
            frames = _decode_decord(data, info, count)
            if size is not None:
                frames = [fit_frames(frame, *size) for frame in frames]
        except Exception:
            frames = None  # PyAV decides: it decodes what decord cannot, and refuses what is truly broken
    elif backend != "pyav":
        raise ValueError(f"backend must be 'pyav' or 'decord', got {backend!r}")
    if frames is None:
        try:
            frames = _decode_pyav(data, info, count, field, size)
        except RequestError:
            raise
        except Exception as exc:
            raise RequestError(field, "could not be decoded (truncated or corrupt video)") from exc
    # A cut WebM demuxes to a clean end of stream: only the header's count (from its duration there,
    # one frame of slack for that estimate) tells that decoding stopped early.
    if len(frames) < count and len(frames) < info.frames - 1:
        raise RequestError(field, f"could not be decoded (truncated: {len(frames)} of {info.frames} frames)")
    if num_frames is not None and len(frames) < num_frames:
        raise RequestError(field, f"has {len(frames)} frames; {num_frames} needed")
    if not frames:
        raise RequestError(field, "has no frames")
    return np.stack(frames), info.fps


# ----------------------------------------------------------------------------------------------- audio


def _wav_truncated(data: bytes) -> bool:
    """Whether a RIFF/WAVE file's data chunk runs past the end (libsndfile silently reads what is there)."""
    at = 12
    while at + 8 <= len(data):
        chunk, size = data[at : at + 4], struct.unpack("<I", data[at + 4 : at + 8])[0]
        if chunk == b"data":
            # 0 and 0xFFFFFFFF are what streaming writers (ffmpeg to a pipe) leave: length unknown.
            return size not in (0, 0xFFFFFFFF) and at + 8 + size > len(data)
        at += 8 + size + (size & 1)  # chunks are padded to even sizes
    return True  # no data chunk within the bytes


@dataclass(frozen=True)
class AudioInfo:
    kind: str  # one of AUDIO_FORMATS
    rate: int
    channels: int
    frames: int  # samples per channel, as the header declares

    @property
    def seconds(self) -> float:
        return self.frames / self.rate


def probe_audio(data: bytes, *, max_bytes: int, max_seconds: float, field: str = "audio") -> AudioInfo:
    """Kind, rate, channels and length from a WAV/FLAC/MP3/OGG header, checked; nothing is decoded."""
    import soundfile

    _check_bytes(data, max_bytes, field)
    kind = sniff(data)
    if kind not in AUDIO_FORMATS:
        raise _refuse_kind(kind, AUDIO_FORMATS, "audio file", field)
    try:
        # libsndfile (>= 1.1 decodes MP3 through mpg123; the soundfile wheel bundles 1.2) reads the header.
        header = soundfile.info(io.BytesIO(data))
    except Exception as exc:
        raise RequestError(field, f"could not be decoded (truncated or corrupt {kind})") from exc
    if SOUNDFILE_FORMATS.get(header.format) != kind:
        raise RequestError(field, f"{kind} header says {header.format}; allowed: {_allowed(AUDIO_FORMATS)}")
    if kind == "OGG" and header.subtype not in OGG_CODECS:
        raise RequestError(field, f"OGG codec {header.subtype} is not allowed; allowed: {_allowed(OGG_CODECS)}")
    rate, channels, declared = header.samplerate, header.channels, header.frames
    if not 0 < rate <= MAX_SAMPLE_RATE or not 0 < channels <= MAX_CHANNELS:
        raise RequestError(
            field,
            f"has {channels} channels at {rate} Hz; at most {MAX_CHANNELS} channels and {MAX_SAMPLE_RATE} Hz allowed",
        )
    if declared / rate > max_seconds:
        raise RequestError(field, f"is {declared / rate:.2f} s long; at most {max_seconds:g} s allowed")
    if kind == "WAV" and _wav_truncated(bytes(data)):
        raise RequestError(field, "could not be decoded (truncated WAV)")
    return AudioInfo(kind, rate, channels, declared)


# Samples per channel decoded at a time: what one block holds is bounded by the channel cap.
AUDIO_BLOCK = 1 << 16


def decode_audio(
    data: bytes,
    *,
    max_bytes: int,
    max_seconds: float,
    sample_rate: int,
    until_s: float | None = None,
    max_decoded_bytes: int | None = None,
    field: str = "audio",
) -> np.ndarray:
    """WAV/FLAC/MP3/OGG (Vorbis, Opus) bytes -> float32 mono [samples] at `sample_rate`: the first
    `until_s` seconds (all when None; a shorter file is all of it). `max_decoded_bytes` caps seconds x
    rate x channels x 4 of what is decoded, before decoding; blocks are mixed to mono as they come."""
    import librosa
    import soundfile

    info = probe_audio(data, max_bytes=max_bytes, max_seconds=max_seconds, field=field)
    rate, declared = info.rate, info.frames
    limit = math.floor(max_seconds * rate)
    wanted = declared if until_s is None else min(declared, math.ceil(until_s * rate))
    _check_decoded(
        field,
        f"{wanted / rate:.2f} s of {info.channels} channels at {rate} Hz",
        wanted * info.channels * 4,
        max_decoded_bytes,
    )
    # Up to limit + 1 samples read when the whole file is wanted: a header that understates the
    # length cannot make us decode more than the cap.
    budget = limit + 1 if until_s is None else wanted
    blocks: list[np.ndarray] = []
    got = 0
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            while got < budget:
                block = sound.read(min(AUDIO_BLOCK, budget - got), dtype="float32", always_2d=True)
                if not len(block):
                    break
                blocks.append(block.mean(axis=1))
                got += len(block)
    except Exception as exc:
        raise RequestError(field, f"could not be decoded (truncated or corrupt {info.kind})") from exc
    if got > limit:
        raise RequestError(field, f"is longer than its header says; at most {max_seconds:g} s allowed")
    # A cut MP3 decodes what is there without an error; its header (Xing/LAME) frame count tells.
    if got < wanted - (MP3_SLACK if info.kind == "MP3" else 0) or not got:
        raise RequestError(field, f"could not be decoded (truncated {info.kind}: {got} of {declared} samples)")
    mono = np.concatenate(blocks)
    if rate != sample_rate:
        mono = librosa.resample(mono, orig_sr=rate, target_sr=sample_rate)  # soxr_hq, librosa's default
    return np.ascontiguousarray(mono, dtype=np.float32)


# ----------------------------------------------------------------------------------------------- sizing


def fit_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize uint8 [F, H, W, 3] or [H, W, 3] to exactly height x width: scale to cover, center crop."""
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3] or [H, W, 3], got {frames.dtype} {frames.shape}")
    source_h, source_w = frames.shape[-3:-1]
    if (source_h, source_w) == (height, width):
        return frames
    # The crop box in source pixels (floats: no rounding before the resize), centered, of the target's
    # aspect; resize(box=...) then scales just that box, which is cover-then-crop in one resampling.
    scale = min(source_h / height, source_w / width)
    box_h, box_w = height * scale, width * scale
    top, left = (source_h - box_h) / 2, (source_w - box_w) / 2
    box = (left, top, left + box_w, top + box_h)
    # LANCZOS: the default of diffusers' VaeImageProcessor, sharpest of Pillow's filters, and antialiased
    # (Pillow widens the kernel when downscaling), which matters for large uploads shrunk to 480p.
    single = frames.ndim == 3
    batch = frames[None] if single else frames
    out = np.stack(
        [
            np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.LANCZOS, box=box))
            for frame in batch
        ]
    )
    return out[0] if single else out


def fit_inside(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [h, w, 3] scaled to fit height x width and centred on black, as diffusers'
    WanAnimateImageProcessor fills (resize_mode "fill", fill_color 0). Lanczos: the pipeline asks for
    bilinear, but the processor's base class re-registers its own default, and Lanczos is what runs."""
    source_h, source_w = image.shape[:2]
    ratio, source_ratio = width / height, source_w / source_h
    fitted_w = width if ratio < source_ratio else source_w * height // source_h
    fitted_h = height if ratio >= source_ratio else source_h * width // source_w
    fitted = Image.fromarray(image).resize((fitted_w, fitted_h), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width, height), color=0)
    canvas.paste(fitted, box=(width // 2 - fitted_w // 2, height // 2 - fitted_h // 2))
    return np.asarray(canvas)


def grey(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB frames [..., H, W, 3] -> luma [..., H, W] as Pillow's "L" conversion computes it."""
    flat = frames.reshape(-1, *frames.shape[-3:])
    return np.stack([np.asarray(Image.fromarray(frame).convert("L")) for frame in flat]).reshape(frames.shape[:-1])


def floor_size(image: np.ndarray, multiple: int, field: str = "image") -> np.ndarray:
    """uint8 [H, W, 3] with both sides rounded down to `multiple` (Lanczos), as diffusers'
    VaeImageProcessor does to an image it is given no size for."""
    height, width = (side - side % multiple for side in image.shape[:2])
    if height == 0 or width == 0:
        raise RequestError(field, f"is {image.shape[0]}x{image.shape[1]} pixels; at least {multiple} a side")
    if (height, width) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def area_size(height: int, width: int, max_area: int, multiple: int) -> tuple[int, int]:
    """Wan's image-to-video sizing (diffusers' Wan I2V example): the input's aspect at about max_area pixels,
    both sides multiples of `multiple` (and at least one multiple)."""
    if height <= 0 or width <= 0 or max_area <= 0 or multiple <= 0:
        raise ValueError(f"sizes must be positive, got {height}x{width}, {max_area}, {multiple}")
    aspect = height / width
    out_h = round(math.sqrt(max_area * aspect)) // multiple * multiple
    out_w = round(math.sqrt(max_area / aspect)) // multiple * multiple
    return max(out_h, multiple), max(out_w, multiple)


def frames_for_duration(seconds: float, fps: int, temporal: int, max_frames: int, field: str = "audio") -> int:
    """Frames covering `seconds` (of `field`: the audio's, or the OpenAI API's `seconds`) at `fps`,
    rounded up to temporal * k + 1 (the VAE's frame grid)."""
    if not math.isfinite(seconds) or seconds <= 0:
        raise RequestError(field, f"has a duration of {seconds} s; it must be positive")
    # The epsilon keeps float noise (2.0000000001 s) from adding a whole grid step.
    needed = max(1, math.ceil(seconds * fps - 1e-6))
    frames = temporal * math.ceil((needed - 1) / temporal) + 1
    if frames > max_frames:
        longest = temporal * ((max_frames - 1) // temporal) + 1  # the most frames on the grid
        raise RequestError(
            field,
            f"is {seconds:.2f} s = {frames} frames at {fps} fps; "
            f"at most {longest} frames ({longest / fps:.2f} s) allowed",
        )
    return frames
