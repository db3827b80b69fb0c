"""Every Wan task, written once against the stages it runs on.

A task is what a validated, prepared request (contract.validate, conditioning.prepare) asks of the
stages: its conditioning, its segment or clip loop, what one segment or clip hands the next, and
its progress over all of them. `Stages` is the small protocol they run on, with two
implementations: `pipeline.LocalStages` (torch and ONNX Runtime in one process: `generate
--checkpoint`, the benchmarks, the parity tests against diffusers) and `serving.entry.TritonStages`
(BLS calls to the stage models). Parity between the two is parity of the stages, not of two copies
of each task.

Torch-free: the entry models run it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from wan_triton import animate, vace
from wan_triton.conditioning import Media, image_clip_frames
from wan_triton.contract import Family, GenerationRequest, Geometry
from wan_triton.s2v import clips
from wan_triton.stage_io import DenoiseJob, VaeInput

# After every denoising step: (step index from 0, steps in all, what the stages report with it).
Progress = Callable[[int, int, Any], None]
WHITE = np.full((1, 1, 1, 3), 255, np.uint8)  # a VACE mask that generates everything


class Stages(Protocol):
    """What a task runs, and what encodes its output. Frames are [F, H, W, 3], in the stages' own type
    (uint8 from Triton's decoder, float32 in [0, 1] in-process); a tail is float [1, 3, F, H, W] in [-1, 1]."""

    def encode_text(self, prompt: str, negative: str | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Prompt embeddings [1, S, D] and, with a negative prompt, its own (else None, or the stage's)."""

    def encode_image(self, image: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] -> CLIP image tokens [1, T, D]."""

    def encode_video(self, given: VaeInput) -> np.ndarray:
        """Normalised latents [1, C, f, h, w] of the clip `given` stands for."""

    def encode_audio(self, samples: np.ndarray) -> np.ndarray:
        """Mono samples at conditioning.AUDIO_RATE -> wav2vec2's features per video frame, whole clips."""

    def denoise(self, job: DenoiseJob, progress: Progress | None) -> np.ndarray:
        """The job's latents."""

    def decode(self, latents: np.ndarray, tail_frames: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """Frames, and the last `tail_frames` of them as a tail (None for 0)."""

    def encode_mp4(self, frames: np.ndarray, fps: int, audio: np.ndarray | None) -> bytes:
        """The frames as an MP4 (H.264), with the mono `audio` (at conditioning.AUDIO_RATE) as its AAC track."""

    def check(self) -> None:
        """Raise if the job must stop (cancelled, past its deadline): called between stages."""


def generate(
    stages: Stages,
    request: GenerationRequest,
    media: Media,
    family: Family,
    geometry: Geometry,
    progress: Progress | None = None,
) -> np.ndarray:
    """The request's frames [num_frames, H, W, 3]: its task as the checkpoint's family runs it."""
    negative = request.negative_prompt if request.do_classifier_free_guidance else None
    embeds = stages.encode_text(request.prompt, negative)

    def job(conditioning: dict[str, np.ndarray], seed: int | None = None) -> DenoiseJob:
        return DenoiseJob.of(request, *embeds, conditioning, seed)

    stages.check()
    if family.animate:
        return _animate(stages, request, media, geometry, job, progress)
    if family.s2v:
        return _s2v(stages, request, media, job, progress)
    if family.vace:
        conditioning = _vace(stages, request, media, geometry)
    else:
        conditioning = _conditioning(stages, request, media, family)
    stages.check()
    latents = stages.denoise(job(conditioning), progress)
    stages.check()
    return stages.decode(latents)[0]


def _conditioning(stages: Stages, request: GenerationRequest, media: Media, family: Family) -> dict[str, np.ndarray]:
    """I2V (FLF2V, TI2V): the image's clip and tokens; V2V: the video's latents and the strength."""
    if family.concat_condition and media.image is None:  # else the transformer fails on its channels
        raise ValueError("this checkpoint is image to video: pass the prepared image (media=Media(image=...))")
    given: dict[str, np.ndarray] = {}
    if media.image is not None:  # FLF2V: the VAE puts the blank frames between the first and the last
        clip = VaeInput(np.stack(media.images), image_clip_frames(family, request.num_frames))
        given["image_latents"] = stages.encode_video(clip)
        if family.image_tokens:  # FLF2V: the first frame's tokens, then the last's
            given["image_embeds"] = np.concatenate([stages.encode_image(image) for image in media.images], axis=1)
        if media.last_image is not None:
            given["last_frame"] = np.array([[True]])
    if media.video is not None:
        given["video_latents"] = stages.encode_video(VaeInput(media.video))
        given["strength"] = np.array([[request.strength]], np.float32)
    return given


def _vace(stages: Stages, request: GenerationRequest, media: Media, geometry: Geometry) -> dict[str, np.ndarray]:
    """VACE: the clip (or a blank one) encoded apart around its mask, each reference letterboxed onto
    the output's canvas, then the control latents with the mask folded in (wan_triton/vace.py)."""
    canvas = (request.height, request.width)
    mask = WHITE if media.mask is None else media.mask
    if media.video is not None:
        clip = VaeInput(media.video, mask=mask)
    else:
        clip = VaeInput(clip_frames=request.num_frames, canvas=canvas, mask=mask)
    latents = stages.encode_video(clip)
    references = [stages.encode_video(VaeInput(image[None], canvas=canvas)) for image in media.reference_images]
    shape = (request.num_frames, request.height, request.width)
    folded = vace.fold_mask(media.mask, shape, geometry, len(references))
    return {
        "control_latents": vace.control_latents(latents, references, folded),
        "conditioning_scale": np.array([[request.conditioning_scale]], np.float32),
        "reference_frames": np.array([[len(references)]], np.int32),
    }


def _over(progress: Progress | None, part: int, parts: int) -> Progress | None:
    """One segment's (or clip's) progress, counted over the steps of all of them."""
    if progress is None:
        return None
    return lambda index, total, detail: progress(part * total + index, parts * total, detail)


def _animate(stages: Stages, request: GenerationRequest, media: Media, geometry: Geometry, job, progress) -> np.ndarray:
    """Wan2.2 Animate, segment by segment as diffusers runs it (wan_triton/animate.py): each segment's
    noise the seed generator's next draw, its clip starting from the frames the one before ended with
    (handed over as floats), the rest the background (replace) or blank frames."""
    length, overlap = request.segment_frame_length, request.prev_segment_conditioning_frames
    count = animate.padded_frames(request.num_frames, length, overlap)
    names = ("pose_video", "face_video", "background_video", "mask_video")
    driving = {n: animate.pad_back_and_forth(getattr(media, n), count) for n in names if getattr(media, n) is not None}
    temporal, spatial = geometry.vae_temporal, geometry.vae_spatial
    height, width = request.height // spatial, request.width // spatial
    latent_frames = (length - 1) // temporal + 1
    character = stages.encode_video(VaeInput(media.image[None]))
    character = np.concatenate([animate.condition_mask(1, height, width, 1, temporal), character], axis=1)
    tokens = stages.encode_image(media.image)
    segments = animate.segments(request.num_frames, length, overlap)
    pieces, tail = [], None
    for segment in range(segments):
        window = slice(segment * (length - overlap), segment * (length - overlap) + length)
        pose_latents = stages.encode_video(VaeInput(driving["pose_video"][window]))
        start = 0 if tail is None else overlap  # the pixel frames the tail stands for
        if "background_video" in driving:
            clip = VaeInput(driving["background_video"][window][start:], head=tail)
        else:
            clip = VaeInput(clip_frames=length - start, canvas=(request.height, request.width), head=tail)
        given = stages.encode_video(clip)
        kept = None if "mask_video" not in driving else animate.kept_pixels(driving["mask_video"][window], spatial)
        mask = animate.condition_mask(latent_frames, height, width, start, temporal, kept)
        conditioning = {
            "condition_latents": np.concatenate([character, np.concatenate([mask, given], axis=1)], axis=2),
            "pose_latents": pose_latents,
            "face_pixels": driving["face_video"][window][None],
            "noise_draw": np.array([[segment]], np.int32),
            "image_embeds": tokens,
        }
        stages.check()
        latents = stages.denoise(job(conditioning), _over(progress, segment, segments))
        stages.check()
        frames, tail = stages.decode(latents[:, :, 1:], overlap)
        pieces.append(frames[start:])
    return np.concatenate(pieces)[: request.num_frames]


def _s2v(stages: Stages, request: GenerationRequest, media: Media, job, progress) -> np.ndarray:
    """Wan2.2-S2V, clip by clip as the release runs it (wan_triton/s2v/clips.py): each clip's span of the
    audio's features, the reference image's latent frame, the pose video's latents for the clip, and from
    the second clip on the latents of the frames the one before ended with (handed over as floats); each
    clip's noise from the seed plus its index."""
    count, span = clips.clips_for(request.num_frames), clips.CLIP_FRAMES
    features = stages.encode_audio(media.audio)
    if features.shape[-1] < count * span:  # frames past the audio: silent
        missing = count * span - features.shape[-1]
        features = np.concatenate([features, np.zeros((*features.shape[:-1], missing), np.float32)], axis=-1)
    reference = stages.encode_video(VaeInput(media.image[None]))
    pose = None
    if media.pose_video is not None:  # black past its end; each chunk behind a copy of its first frame
        pose = np.zeros((count * span, *media.pose_video.shape[1:]), np.uint8)
        pose[: len(media.pose_video)] = media.pose_video[: count * span]
    pieces, tail = [], None
    for clip in range(count):
        window = slice(clip * span, (clip + 1) * span)
        conditioning = {"audio_features": np.ascontiguousarray(features[..., window]), "reference_latents": reference}
        if pose is not None:
            chunk = pose[window]
            conditioning["pose_latents"] = stages.encode_video(VaeInput(np.concatenate([chunk[:1], chunk])))[:, :, 1:]
        if tail is not None:
            conditioning["motion_latents"] = stages.encode_video(VaeInput(head=tail))
        stages.check()
        latents = stages.denoise(job(conditioning, clips.clip_seed(request.seed, clip)), _over(progress, clip, count))
        stages.check()
        before = conditioning.get("motion_latents", reference)
        frames, tail = stages.decode(np.concatenate([before, latents], axis=2), clips.MOTION_FRAMES)
        kept = frames[-span:]
        pieces.append(kept[clips.FIRST_CLIP_DROPPED :] if clip == 0 else kept)
    return np.concatenate(pieces)[: request.num_frames]
