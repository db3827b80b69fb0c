"""The entry models clients call (`wan_t2v`, `wan_i2v`, `wan_v2v`, `wan_vace`, `wan_animate`, `wan_s2v`, each
also `_stream`).
Validate once, decode the media, then run the stages by BLS.

Torch-free: they hold no weights, so several instances cost little and keep requests flowing
while the stages queue. A rejected request (INVALID_ARGUMENT) reaches no stage.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from wan_triton import animate, conditioning, lora, vace
from wan_triton.acceleration import ACCELERATION_ENV, Acceleration
from wan_triton.contract import (
    INPUTS,
    LIST_INPUTS,
    MAG_RATIOS,
    Family,
    Geometry,
    RequestError,
    inputs_of,
    list_limit,
    validate,
)
from wan_triton.parallel import PARALLEL_ENV, Parallel
from wan_triton.repository import (
    AUDIO_ENCODER,
    DENOISER,
    IMAGE_ENCODER,
    TEXT_ENCODER,
    VAE_DECODER,
    VAE_ENCODER,
    VIDEO_ENCODER,
)
from wan_triton.s2v import clips
from wan_triton.serving import cancel
from wan_triton.serving.glue import (
    Cancelled,
    ModelContext,
    ShuttingDown,
    StageError,
    bytes_tensor,
    call,
    call_streaming,
    inputs,
    per_request,
    response,
    send_final,
)
from wan_triton.serving.metrics import (
    CANCELLED_TOTAL,
    FAILED_TOTAL,
    FRAMES_TOTAL,
    IN_FLIGHT,
    REJECTED_TOTAL,
    REQUEST_SECONDS,
    STAGE_SECONDS,
    VIDEOS_TOTAL,
    Recorder,
)
from wan_triton.serving.models import (
    AUDIO_FEATURES,
    AUDIO_SAMPLES,
    CANVAS,
    CLIP_FRAMES,
    CONDITION_LATENTS,
    CONDITIONING_SCALE,
    CONTROL_LATENTS,
    DENOISER_CONTROLS,
    ENTRIES,
    FACE_PIXELS,
    FPS,
    FRAMES,
    HEAD,
    IMAGE_EMBEDS,
    IMAGE_LATENTS,
    IMAGE_PIXELS,
    JOB_ID,
    LAST_FRAME,
    LATENTS,
    LORA_NAMES,
    LORA_SCALES,
    MOTION_LATENTS,
    NEGATIVE_EMBEDS,
    NEGATIVE_PROMPT,
    NOISE_DRAW,
    POSE_LATENTS,
    PREVIEW_FRAME,
    PROGRESS_TENSORS,
    PROMPT,
    PROMPT_EMBEDS,
    REFERENCE_FRAMES,
    REFERENCE_LATENTS,
    SEED,
    STRENGTH,
    TAIL,
    TAIL_FRAMES,
    VACE_MASK,
    VIDEO,
    VIDEO_LATENTS,
    WANT_PREVIEW,
    limits_of,
)

_DTYPES = {spec.name: spec.numpy_dtype for spec in INPUTS}


class EntryModel:
    """`wan_t2v`, `wan_i2v`, `wan_v2v`, `wan_vace`: one response per request, the video and the seed. The
    model's name says its task (models.ENTRIES)."""

    def initialize(self, args: dict) -> None:
        context = ModelContext(args)
        self.task = ENTRIES[context.name]
        self.inputs = [spec.name for spec in inputs_of(self.task)]
        self.geometry = Geometry.from_checkpoint(context.checkpoint())
        self.family = Family.from_checkpoint(context.checkpoint())
        self.mag_calibrated = (Path(context.checkpoint()) / MAG_RATIOS).is_file()
        allow_list = os.environ.get(lora.ALLOW_LIST_ENV)
        self.loras = lora.AllowList.from_file(allow_list) if allow_list else None
        self.limits = limits_of(context.config)
        self.parallel = Parallel.parse(os.environ.get(PARALLEL_ENV))  # serve --parallel: what it refuses
        self.acceleration = Acceleration.parse(os.environ.get(ACCELERATION_ENV))  # serve --compile, --quantize
        self.metrics = Recorder(context.name)
        self.metrics.prime(
            IN_FLIGHT, REQUEST_SECONDS, VIDEOS_TOTAL, FRAMES_TOTAL, REJECTED_TOTAL, CANCELLED_TOTAL, FAILED_TOTAL
        )

    def execute(self, requests: list) -> list:
        with cancel.running(self.limits.deadline_s):
            return per_request(requests, lambda request: self._generate(request, on_progress=None), self.metrics)

    def _generate(self, request, on_progress):
        if request.is_cancelled():
            raise Cancelled("while queued")  # never started (R10)
        if cancel.draining():  # the server is stopping: it finishes its jobs, starts none (R14)
            raise ShuttingDown("the server is shutting down; retry elsewhere")
        # Checked and decoded before any stage: a rejected request costs no stage (R8, R19).
        given = inputs(request, self.inputs)
        for name, array in given.items():
            if name in LIST_INPUTS:  # counted before any list is built (R29)
                cap = list_limit(name, self.limits)
                if not 1 <= array.size <= cap:
                    raise RequestError(name, f"has {array.size} values; 1 to {cap} allowed")
            elif array.size != 1:
                raise RequestError(name, f"one value per request (shape [1, 1]), got shape {list(array.shape)}")
        raw = {n: list(a.reshape(-1)) if n in LIST_INPUTS else a.reshape(-1)[0] for n, a in given.items()}
        job = validate(raw, self.geometry, self.limits, self.task)
        self.family.check(job)
        self.parallel.check_request(job.height, job.width, job.num_frames, job.cache_method, self.geometry)
        self.acceleration.check_request(job.cache_method)
        if job.cache_method == "mag" and not self.mag_calibrated:
            raise RequestError(
                "cache_method", "'mag' needs this checkpoint's calibrated ratios; this server has none (calibrate-mag)"
            )
        for name in job.lora_names:
            if self.loras is None:
                raise RequestError("lora_names", "this server has no adapters (serve --loras)")
            self.loras.resolve(name, self.family.experts)
        job, media = conditioning.prepare(job, self.geometry, self.limits)

        def tensor(name: str) -> np.ndarray:
            value = getattr(job, name)
            if isinstance(value, str):
                value = value.encode()
            return np.array([[np.nan if value is None else value]], dtype=_DTYPES[name])

        # From here on a cancel or the deadline raises the job's flag; every stage checks it.
        with cancel.watch(request, self.limits.deadline_s) as watcher:
            embeds = self._call(
                TEXT_ENCODER,
                {PROMPT.name: bytes_tensor(job.prompt), NEGATIVE_PROMPT.name: bytes_tensor(job.negative_prompt)},
                [PROMPT_EMBEDS.name, NEGATIVE_EMBEDS.name],
            )
            watcher.check()
            controls = {n: tensor(n) for n in DENOISER_CONTROLS}
            if job.preview and on_progress is not None:
                controls[WANT_PREVIEW.name] = np.array([[True]])

            def progress(values: dict[str, np.ndarray]) -> None:
                try:
                    if on_progress is not None:
                        on_progress(values)  # with the denoiser's preview frame, when asked
                except Exception:
                    # The stream is read to its end either way; stop the denoiser within a step
                    # rather than let it finish a job whose progress cannot be delivered.
                    cancel.cancel(watcher.job_id)
                    raise

            def denoise(guide: dict[str, np.ndarray], report=progress) -> dict[str, np.ndarray]:
                return self._denoise({**embeds, **controls, **guide, **self._loras(job)}, watcher, report)

            if self.family.animate:
                frames = {FRAMES.name: self._animate(job, media, denoise, progress, watcher)}
            elif self.family.s2v:
                frames = {FRAMES.name: self._s2v(job, media, denoise, progress, watcher)}
            else:
                latents = denoise(self._guide(job, media))
                frames = self._call(VAE_DECODER, latents, [FRAMES.name])
            watcher.check()
            audio = {} if media.audio is None else {AUDIO_SAMPLES.name: media.audio[None]}
            video = self._call(VIDEO_ENCODER, {**frames, FPS.name: tensor(FPS.name), **audio}, [VIDEO.name])
        outputs = {VIDEO.name: video[VIDEO.name], SEED.name: tensor(SEED.name)}
        if job.return_frames:  # opt-in by input: Triton reports every output as requested when none is
            outputs[FRAMES.name] = frames[FRAMES.name]
        self.metrics.add(VIDEOS_TOTAL)
        self.metrics.add(FRAMES_TOTAL, frames[FRAMES.name].shape[1])
        return response(outputs)

    def _denoise(self, tensors: dict[str, np.ndarray], watcher, progress) -> dict[str, np.ndarray]:
        try:
            with self._timed(DENOISER):
                latents = call_streaming(
                    DENOISER,
                    {**tensors, JOB_ID.name: bytes_tensor(watcher.job_id)},
                    [LATENTS.name],
                    [t.name for t in (*PROGRESS_TENSORS, PREVIEW_FRAME)],
                    progress,
                )
        except StageError:
            watcher.check()  # a stopped job reads as its cause, not as a stage failure
            raise
        watcher.check()
        return latents

    def _animate(self, job, media: conditioning.Media, denoise, progress, watcher) -> np.ndarray:
        """Wan2.2 Animate, segment by segment (wan_triton/animate.py): each segment's clip starts from
        the frames the one before ended with, handed over as floats; progress counts over them all."""
        length, overlap = job.segment_frame_length, job.prev_segment_conditioning_frames
        count = animate.padded_frames(job.num_frames, length, overlap)
        names = ("pose_video", "face_video", "background_video", "mask_video")
        driving = {
            n: animate.pad_back_and_forth(getattr(media, n), count) for n in names if getattr(media, n) is not None
        }
        temporal, spatial = self.geometry.vae_temporal, self.geometry.vae_spatial
        height, width = job.height // spatial, job.width // spatial
        latent_frames = (length - 1) // temporal + 1
        canvas = np.array([[job.height, job.width]], np.int32)
        character = self._call(VAE_ENCODER, {FRAMES.name: media.image[None, None]}, [LATENTS.name])[LATENTS.name]
        character = np.concatenate([animate.condition_mask(1, height, width, 1, temporal), character], axis=1)
        tokens = self._call(IMAGE_ENCODER, {IMAGE_PIXELS.name: media.image[None]}, [IMAGE_EMBEDS.name])
        segments, steps = animate.segments(job.num_frames, length, overlap), job.num_inference_steps
        pieces, tail = [], None
        for segment in range(segments):
            window = slice(segment * (length - overlap), segment * (length - overlap) + length)
            pose = {FRAMES.name: driving["pose_video"][window][None]}
            pose_latents = self._call(VAE_ENCODER, pose, [LATENTS.name])[LATENTS.name]
            background = driving["background_video"][window] if "background_video" in driving else None
            clip: dict[str, np.ndarray] = {} if tail is None else {HEAD.name: tail}
            start = 0 if tail is None else overlap  # the pixel frames the head stands for
            if background is not None:
                clip[FRAMES.name] = background[start:][None]
            else:
                clip.update({CANVAS.name: canvas, CLIP_FRAMES.name: np.array([[length - start]], np.int32)})
            given = self._call(VAE_ENCODER, clip, [LATENTS.name])[LATENTS.name]
            kept = None if "mask_video" not in driving else animate.kept_pixels(driving["mask_video"][window], spatial)
            mask = animate.condition_mask(latent_frames, height, width, start, temporal, kept)
            watcher.check()

            def relay(values: dict[str, np.ndarray], done: int = segment * steps) -> None:
                step, total = PROGRESS_TENSORS[:2]
                values = {**values, step.name: values[step.name] + done, total.name: values[total.name] * segments}
                progress(values)

            guide = {
                CONDITION_LATENTS.name: np.concatenate([character, np.concatenate([mask, given], axis=1)], axis=2),
                POSE_LATENTS.name: pose_latents,
                FACE_PIXELS.name: driving["face_video"][window][None],
                NOISE_DRAW.name: np.array([[segment]], np.int32),
                **tokens,
            }
            latents = denoise(guide, relay)[LATENTS.name]
            tensors = {LATENTS.name: latents[:, :, 1:], TAIL_FRAMES.name: np.array([[overlap]], np.int32)}
            decoded = self._call(VAE_DECODER, tensors, [FRAMES.name, TAIL.name])
            tail = decoded[TAIL.name]
            pieces.append(decoded[FRAMES.name][:, start:])
            watcher.check()
        return np.concatenate(pieces, axis=1)[:, : job.num_frames]

    def _s2v(self, job, media: conditioning.Media, denoise, progress, watcher) -> np.ndarray:
        """Wan2.2-S2V, clip by clip (wan_triton/s2v/clips.py): each clip's span of the audio's features, the
        reference's latent frame, the pose video's latents for the clip, and from the second clip on the
        latents of the frames the one before ended with, handed over as floats; progress counts over them all."""
        count = clips.clips_for(job.num_frames)
        span = clips.CLIP_FRAMES
        features = self._call(AUDIO_ENCODER, {AUDIO_SAMPLES.name: media.audio[None]}, [AUDIO_FEATURES.name])
        features = features[AUDIO_FEATURES.name]
        if features.shape[-1] < count * span:  # frames past the audio: silent
            missing = count * span - features.shape[-1]
            features = np.concatenate([features, np.zeros((*features.shape[:-1], missing), np.float32)], axis=-1)
        encode = lambda tensors: self._call(VAE_ENCODER, tensors, [LATENTS.name])[LATENTS.name]  # noqa: E731
        reference = encode({FRAMES.name: media.image[None, None]})
        pose = None
        if media.pose_video is not None:  # black past its end; each chunk behind a copy of its first frame
            pose = np.zeros((count * span, *media.pose_video.shape[1:]), np.uint8)
            pose[: len(media.pose_video)] = media.pose_video[: count * span]
        steps, pieces, tail = job.num_inference_steps, [], None
        for clip in range(count):
            window = slice(clip * span, (clip + 1) * span)
            guide = {
                AUDIO_FEATURES.name: np.ascontiguousarray(features[..., window]),
                REFERENCE_LATENTS.name: reference,
                "seed": np.array([[clips.clip_seed(job.seed, clip)]], np.int64),  # the release's seed + clip
            }
            if pose is not None:
                chunk = pose[window]
                guide[POSE_LATENTS.name] = encode({FRAMES.name: np.concatenate([chunk[:1], chunk])[None]})[:, :, 1:]
            if tail is not None:
                guide[MOTION_LATENTS.name] = encode({HEAD.name: tail})
            watcher.check()

            def relay(values: dict[str, np.ndarray], done: int = clip * steps) -> None:
                step, total = PROGRESS_TENSORS[:2]
                progress({**values, step.name: values[step.name] + done, total.name: values[total.name] * count})

            latents = denoise(guide, relay)[LATENTS.name]
            before = reference if tail is None else guide[MOTION_LATENTS.name]
            tensors = {
                LATENTS.name: np.concatenate([before, latents], axis=2),
                TAIL_FRAMES.name: np.array([[clips.MOTION_FRAMES]], np.int32),
            }
            decoded = self._call(VAE_DECODER, tensors, [FRAMES.name, TAIL.name])
            tail = decoded[TAIL.name]
            kept = decoded[FRAMES.name][:, -span:]
            pieces.append(kept[:, clips.FIRST_CLIP_DROPPED :] if clip == 0 else kept)
            watcher.check()
        return np.concatenate(pieces, axis=1)[:, : job.num_frames]

    @contextlib.contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            with cancel.waiting_on(stage):
                yield
        finally:
            self.metrics.observe(STAGE_SECONDS, time.perf_counter() - started, stage=stage)

    def _call(self, stage: str, tensors: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        with self._timed(stage):
            return call(stage, tensors, outputs)

    @staticmethod
    def _loras(job) -> dict[str, np.ndarray]:
        if not job.lora_names:
            return {}
        names = np.array([[name.encode("utf-8") for name in job.lora_names]], dtype=np.object_)
        return {LORA_NAMES.name: names, LORA_SCALES.name: np.array([job.lora_scales], np.float32)}

    def _guide(self, job, media: conditioning.Media) -> dict[str, np.ndarray]:
        """The denoiser's conditioning inputs, from the encoders (models.GUIDE)."""
        if self.family.vace:
            return self._vace_guide(job, media)
        guide = {}
        if media.image is not None:
            clip = conditioning.image_clip_frames(self.family, job.num_frames)
            pixels = {FRAMES.name: np.stack(media.images)[None]}  # FLF2V: the encoder puts the blanks between
            if clip is not None:
                pixels[CLIP_FRAMES.name] = np.array([[clip]], np.int32)
            guide[IMAGE_LATENTS.name] = self._call(VAE_ENCODER, pixels, [LATENTS.name])[LATENTS.name]
            if self.family.image_tokens:  # FLF2V: the first frame's tokens, then the last's
                tokens = [
                    self._call(IMAGE_ENCODER, {IMAGE_PIXELS.name: image[None]}, [IMAGE_EMBEDS.name])[IMAGE_EMBEDS.name]
                    for image in media.images
                ]
                guide[IMAGE_EMBEDS.name] = np.concatenate(tokens, axis=1)
            if media.last_image is not None:
                guide[LAST_FRAME.name] = np.array([[True]])
        if media.video is not None:
            latents = self._call(VAE_ENCODER, {FRAMES.name: media.video[None]}, [LATENTS.name])
            guide[VIDEO_LATENTS.name] = latents[LATENTS.name]
            guide[STRENGTH.name] = np.array([[job.strength]], np.float32)
        return guide

    def _vace_guide(self, job, media: conditioning.Media) -> dict[str, np.ndarray]:
        """VACE: the clip (or a blank one) encoded around its mask, each reference on the output's
        canvas, then the control latents assembled here (wan_triton/vace.py)."""
        canvas = np.array([[job.height, job.width]], np.int32)
        if media.video is not None:
            clip = {FRAMES.name: media.video[None]}
        else:
            clip = {CANVAS.name: canvas, CLIP_FRAMES.name: np.array([[job.num_frames]], np.int32)}
        white = np.full((1, 1, 1, 1, 3), 255, np.uint8)  # no mask: all of it is generated
        clip[VACE_MASK.name] = white if media.mask is None else media.mask[None]
        latents = self._call(VAE_ENCODER, clip, [LATENTS.name])[LATENTS.name]
        references = [
            self._call(VAE_ENCODER, {FRAMES.name: image[None, None], CANVAS.name: canvas}, [LATENTS.name])[LATENTS.name]
            for image in media.reference_images
        ]
        folded = vace.fold_mask(media.mask, (job.num_frames, job.height, job.width), self.geometry, len(references))
        return {
            CONTROL_LATENTS.name: vace.control_latents(latents, references, folded),
            CONDITIONING_SCALE.name: np.array([[job.conditioning_scale]], np.float32),
            REFERENCE_FRAMES.name: np.array([[len(references)]], np.int32),
        }


class StreamEntryModel(EntryModel):
    """The `_stream` entries (decoupled): a progress response per denoising step, then the video
    and the seed with the final flag, which is always sent, also on error and cancel (R11)."""

    def execute(self, requests: list) -> None:
        with cancel.running(self.limits.deadline_s):
            for request in requests:
                self._stream(request)
        # Triton unloads a decoupled model only once every response sender is gone; one caught
        # in a reference cycle (closures, tracebacks) would hold shutdown until a collection.
        gc.collect()

    def _stream(self, request) -> None:
        sender = request.get_response_sender()

        def relay(values: dict) -> None:
            if not sender.is_cancelled():  # a client that left takes no progress; the watcher stops the job
                sender.send(response(values))

        send_final(sender, per_request([request], lambda r: self._generate(r, relay), self.metrics)[0])
