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
from wan_triton.contract import (
    ANIMATE,
    DEFAULTS,
    SPEECH_TO_VIDEO,
    Family,
    GenerationRequest,
    Geometry,
    Limits,
    RequestError,
    check_output,
)

AUDIO_RATE = 44_100  # the MP4's AAC track


@dataclass(frozen=True)
class Media:
    image: np.ndarray | None = None  # uint8 [H, W, 3] at the request's size
    last_image: np.ndarray | None = None  # the same, the last frame (Wan2.1 FLF2V)
    video: np.ndarray | None = None  # uint8 [F, H, W, 3] at the request's size and frame count
    audio: np.ndarray | None = None  # float32 mono samples at AUDIO_RATE
    mask: np.ndarray | None = None  # VACE: uint8 [F, H, W, 3] as `video`, white where it is generated
    # VACE: uint8 [h, w, 3] each at its own size, sides rounded down to the VAE's factor (the stages
    # letterbox them onto the output's size).
    reference_images: tuple[np.ndarray, ...] = ()
    # Animate: `image` is the character, fitted inside the output's size on black; the driving videos
    # have the request's frame count, the pose and background at its size, the face at the face
    # encoder's square; the mask is grey (luma) [F, H, W], white where the character goes.
    pose_video: np.ndarray | None = None
    face_video: np.ndarray | None = None
    background_video: np.ndarray | None = None
    mask_video: np.ndarray | None = None

    @property
    def images(self) -> list[np.ndarray]:
        """I2V's frames: the first, and for Wan2.1 FLF2V the last."""
        return [image for image in (self.image, self.last_image) if image is not None]


def prepare(request: GenerationRequest, geometry: Geometry, limits: Limits) -> tuple[GenerationRequest, Media]:
    """Decode the request's media and settle what they decide; the request comes back updated."""
    changes: dict[str, object] = {}
    sound = None
    if request.audio is not None:  # its header first: it may decide the length
        sound = media.probe_audio(request.audio, max_bytes=limits.max_audio_bytes, max_seconds=limits.max_media_seconds)
        speech = request.task == SPEECH_TO_VIDEO  # its length follows the audio unless given, to the frame
        if request.frames_from_audio or (speech and "num_frames" not in request.given):
            temporal = 1 if speech else geometry.temporal_factor  # S2V trims its clips to any length
            changes["num_frames"] = media.frames_for_duration(sound.seconds, request.fps, temporal, limits.max_frames)
    image = last_image = video = None
    if request.image is not None:
        image = media.decode_image(request.image, max_bytes=limits.max_image_bytes, max_pixels=limits.max_media_pixels)
        source = image.shape[:2]
        size = _output_size(request, source, geometry, limits, changes)
        animate = request.task == ANIMATE  # the character, whole, on black (diffusers' Animate)
        image = media.fit_inside(image, *size) if animate else media.fit_frames(image, *size)
        if request.last_image is not None:  # fitted to the first frame's size, as diffusers does
            last = media.decode_image(
                request.last_image,
                max_bytes=limits.max_image_bytes,
                max_pixels=limits.max_media_pixels,
                field="last_image",
            )
            last_image = media.fit_frames(last, *size)
    if request.video is not None:
        info = media.probe_video(request.video, max_bytes=limits.max_video_bytes)
        frames = changes.get("num_frames", request.num_frames if "num_frames" in request.given else None)
        if frames is None:  # as many as the video has, 4k+1
            usable = min(info.frames, limits.max_frames)
            if usable < 1:
                raise RequestError("video", "has no frames")
            frames = changes["num_frames"] = (usable - 1) // geometry.temporal_factor * geometry.temporal_factor + 1
        if "fps" not in request.given:
            changes["fps"] = int(min(max(round(info.fps), limits.min_fps), limits.max_fps))
        size = _output_size(request, (info.height, info.width), geometry, limits, changes)
        video, _ = _video(request, "video", int(frames), size, limits)  # type: ignore[call-overload]
    mask = None
    if request.mask is not None and video is not None:  # validate refuses a mask without a video
        mask, _ = _video(request, "mask", len(video), video.shape[1:3], limits)
    references = tuple(
        media.floor_size(
            media.decode_image(
                data, max_bytes=limits.max_image_bytes, max_pixels=limits.max_media_pixels, field="reference_images"
            ),
            geometry.vae_spatial,
            field="reference_images",
        )
        for data in request.reference_images
    )
    driving = {}
    if request.pose_video is not None and request.task == ANIMATE:
        driving = _driving_videos(request, geometry, limits, changes)
    elif request.pose_video is not None:  # S2V: as many frames as the video makes, black past its end
        size = (changes.get("height", request.height), changes.get("width", request.width))
        frames = changes.get("num_frames", request.num_frames)
        driving = {"pose_video": _video(request, "pose_video", None, size, limits)[0][: int(frames)]}
    request = dataclasses.replace(request, **changes)  # type: ignore[arg-type]
    if changes:
        check_output(request, limits)
    audio = None
    if sound is not None:  # only as far as the video lasts: the MP4's track is trimmed to it
        audio = media.decode_audio(
            request.audio,
            max_bytes=limits.max_audio_bytes,
            max_seconds=limits.max_media_seconds,
            sample_rate=AUDIO_RATE,
            until_s=request.num_frames / request.fps,
            max_decoded_bytes=limits.max_media_decoded_bytes,
        )
    return request, Media(image, last_image, video, audio, mask, references, **driving)


def _driving_videos(request: GenerationRequest, geometry: Geometry, limits: Limits, changes: dict) -> dict:
    """Animate: the pose video decides the frame count (all its frames, up to the limit, unless
    num_frames is given); the other driving videos must have as many."""
    size = (changes.get("height", request.height), changes.get("width", request.width))

    def decode(field: str, frames: int | None, at: tuple[int, int]) -> np.ndarray:
        decoded, fps = _video(request, field, frames, at, limits)
        if field == "pose_video" and "fps" not in request.given:
            changes["fps"] = int(min(max(round(fps), limits.min_fps), limits.max_fps))
        return decoded

    pose = decode("pose_video", request.num_frames if "num_frames" in request.given else None, size)
    frames = changes["num_frames"] = len(pose)
    if frames <= request.prev_segment_conditioning_frames:
        raise RequestError("pose_video", f"has {frames} frames; more than prev_segment_conditioning_frames needed")
    assert geometry.face_side is not None, "an Animate checkpoint's geometry has its face size"
    videos = {"pose_video": pose, "face_video": decode("face_video", frames, (geometry.face_side,) * 2)}
    if request.mode == "replace":
        videos["background_video"] = decode("background_video", frames, size)
        videos["mask_video"] = media.grey(decode("mask_video", frames, size))
    return videos


def _video(
    request: GenerationRequest, field: str, frames: int | None, size: tuple[int, int], limits: Limits
) -> tuple[np.ndarray, float]:
    """A video input decoded under the limits: `frames` of it (all, up to the limit, for None) at `size`."""
    return media.decode_video(
        getattr(request, field),
        max_bytes=limits.max_video_bytes,
        max_pixels=limits.max_media_pixels,
        max_frames=limits.max_frames,
        max_seconds=limits.max_media_seconds,
        num_frames=frames,
        size=size,
        max_decoded_bytes=limits.max_media_decoded_bytes,
        field=field,
    )


def _output_size(
    request: GenerationRequest, source: tuple[int, int], geometry: Geometry, limits: Limits, changes: dict
) -> tuple[int, int]:
    """The output's height and width: the request's, or the media's aspect at Wan's default area
    (recorded in `changes`)."""
    if request.given & {"height", "width"}:
        return request.height, request.width
    area = min(DEFAULTS.height * DEFAULTS.width, limits.max_area)
    changes["height"], changes["width"] = media.area_size(*source, area, geometry.spatial_multiple)
    return changes["height"], changes["width"]  # type: ignore[return-value]


def image_clip_frames(family: Family, num_frames: int) -> int | None:
    """I2V: the clip the VAE encodes for the condition. Wan I2V models take the image followed by
    blank frames, the whole length; Wan2.2 TI2V takes the image alone (None: no padding)."""
    return None if family.expand_timesteps else num_frames
