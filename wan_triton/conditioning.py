"""A validated request's media, decoded and fitted: what the stages condition on.

Torch-free; runs in the entry models (and in-process) after `contract.validate` and before any
model: every refusal is a RequestError naming the input (R8). What the client left open follows
the media: without height and width, the output keeps the image's or video's aspect at Wan's
default area (area-based sizing, as Wan's I2V examples do); V2V without num_frames takes as many
frames as the video has (4k+1, up to the limit) and its fps; `frames_from_audio` makes num_frames
cover the audio.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from wan_triton import media
from wan_triton.contract import DEFAULTS, Family, GenerationRequest, Geometry, Limits, RequestError, check_output

AUDIO_RATE = 44_100  # the MP4's AAC track


@dataclass(frozen=True)
class Media:
    image: np.ndarray | None = None  # uint8 [H, W, 3] at the request's size
    video: np.ndarray | None = None  # uint8 [F, H, W, 3] at the request's size and frame count
    audio: np.ndarray | None = None  # float32 mono samples at AUDIO_RATE


def prepare(request: GenerationRequest, geometry: Geometry, limits: Limits) -> tuple[GenerationRequest, Media]:
    """Decode the request's media and settle what they decide; the request comes back updated."""
    changes: dict[str, object] = {}
    audio = None
    if request.audio is not None:
        audio = media.decode_audio(
            request.audio,
            max_bytes=limits.max_audio_bytes,
            max_seconds=limits.max_media_seconds,
            sample_rate=AUDIO_RATE,
        )
        if request.frames_from_audio:
            changes["num_frames"] = media.frames_for_duration(
                len(audio) / AUDIO_RATE, request.fps, geometry.temporal_factor, limits.max_frames
            )
    image = video = None
    source = None
    if request.image is not None:
        image = media.decode_image(request.image, max_bytes=limits.max_image_bytes, max_pixels=limits.max_media_pixels)
        source = image.shape[:2]
    if request.video is not None:
        frames = changes.get("num_frames", request.num_frames if "num_frames" in request.given else None)
        if frames is None:  # as many as the video has, 4k+1
            info = media.probe_video(request.video, max_bytes=limits.max_video_bytes)
            usable = min(info.frames, limits.max_frames)
            if usable < 1:
                raise RequestError("video", "has no frames")
            frames = changes["num_frames"] = (usable - 1) // geometry.temporal_factor * geometry.temporal_factor + 1
        video, fps = media.decode_video(
            request.video,
            max_bytes=limits.max_video_bytes,
            max_pixels=limits.max_media_pixels,
            max_frames=limits.max_frames,
            max_seconds=limits.max_media_seconds,
            num_frames=int(frames),  # type: ignore[call-overload]
        )
        source = video.shape[1:3]
        if "fps" not in request.given:
            changes["fps"] = int(min(max(round(fps), limits.min_fps), limits.max_fps))
    if source is not None and not request.given & {"height", "width"}:
        area = min(DEFAULTS.height * DEFAULTS.width, limits.max_area)
        changes["height"], changes["width"] = media.area_size(*source, area, geometry.spatial_multiple)
    request = dataclasses.replace(request, **changes)  # type: ignore[arg-type]
    if changes:
        check_output(request, limits)
    size = (request.height, request.width)
    return request, Media(
        image=None if image is None else media.fit_frames(image, *size),
        video=None if video is None else media.fit_frames(video, *size),
        audio=audio,
    )


def image_clip_frames(family: Family, num_frames: int) -> int | None:
    """I2V: the clip the VAE encodes for the condition. Wan I2V models take the image followed by
    blank frames, the whole length; Wan2.2 TI2V takes the image alone (None: no padding)."""
    return None if family.expand_timesteps else num_frames
