"""The stage models: text and image encoders, denoiser, VAE decoder and encoder, video encoder
(Python backend).

Each loads only its own part of the checkpoint (or its exported graphs), warms up inside
`initialize` (so Triton reports it ready only once it can serve, R16), and answers every request
on its own (a failure fails only that request).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from wan_triton.contract import CACHE_METHODS, PREVIEW_SIDE, Limits, RequestError
from wan_triton.repository import AUDIO_ENCODER, IMAGE_ENCODER, ONNX_FILES, TEXT_ENCODER, VAE_DECODER, VAE_ENCODER
from wan_triton.s2v.clips import MOTION_FRAMES
from wan_triton.serving import cancel
from wan_triton.serving.glue import (
    CallerRefused,
    Cancelled,
    DeadlineExceeded,
    ModelContext,
    bytes_tensor,
    check_caller,
    failure,
    from_entry,
    inputs,
    per_request,
    redacted,
    response,
    send_final,
    text,
)
from wan_triton.serving.metrics import STEPS_TOTAL, Recorder
from wan_triton.serving.models import (
    AUDIO_FEATURES,
    AUDIO_SAMPLES,
    CANVAS,
    CLIP_FRAMES,
    CONDITION_LATENTS,
    CONTROL_LATENTS,
    DENOISER_CONTROLS,
    FACE_PIXELS,
    FPS,
    FRAMES,
    HEAD,
    IMAGE_EMBEDS,
    IMAGE_LATENTS,
    IMAGE_PIXELS,
    JOB_ID,
    LATENTS,
    LORA_NAMES,
    LORA_SCALES,
    NEGATIVE_EMBEDS,
    NEGATIVE_PROMPT,
    POSE_LATENTS,
    PREVIEW_FRAME,
    PROGRESS_TENSORS,
    PROMPT,
    PROMPT_EMBEDS,
    REFERENCE_LATENTS,
    STAGE_ERROR,
    TAIL,
    TAIL_FRAMES,
    VACE_MASK,
    VIDEO,
    WANT_PREVIEW,
    limits_of,
)
from wan_triton.stage_io import CONDITIONING, Controls, DenoiseJob, VaeInput


class TextEncoderModel:
    """Encodes the prompts of every request in the dynamic batch as one encoder batch."""

    def initialize(self, args: dict) -> None:
        from wan_triton import onnx_runtime as rt
        from wan_triton.pipeline.layout import open_checkpoint
        from wan_triton.pipeline.text import PromptEncoder

        context = ModelContext(args)
        self.limits = limits_of(context.config)
        session = rt.session(context.folder / ONNX_FILES[TEXT_ENCODER]["model"], context.device)
        self.encoder = PromptEncoder(open_checkpoint(context.checkpoint()).tokenizer(), rt.encoder_fn(session))
        self.encoder(["warm-up", ""])

    def execute(self, requests: list) -> list:
        # The prompt pairs of every valid request go through the encoder as one batch; a request
        # that fails its checks (or, should the batch fail, its own encoding) fails alone (R5).
        answers: list = [None] * len(requests)
        pairs: dict[int, list[str]] = {}
        for index, request in enumerate(requests):
            try:
                pairs[index] = self._prompts(request)
            except Exception as exc:
                answers[index] = failure(exc)[1]
        try:
            embeds = self.encoder([t for texts in pairs.values() for t in texts]) if pairs else None
        except Exception:
            embeds = None  # encode each request alone below: the failure stays with its request
        start = 0
        for index, texts in pairs.items():
            try:
                if embeds is None:
                    mine = self.encoder(texts)
                else:
                    mine, start = embeds[start : start + len(texts)], start + len(texts)
                answers[index] = response({PROMPT_EMBEDS.name: mine[0::2], NEGATIVE_EMBEDS.name: mine[1::2]})
            except Exception as exc:
                answers[index] = failure(exc)[1]
        return answers

    def _prompts(self, request) -> list[str]:
        """A request's (prompt, negative) texts, interleaved, each within the prompt byte limit."""
        check_caller(request)
        given = inputs(request, (PROMPT.name, NEGATIVE_PROMPT.name))
        texts = []
        for prompt, negative in zip(
            given[PROMPT.name].reshape(-1), given[NEGATIVE_PROMPT.name].reshape(-1), strict=True
        ):
            for name, value in ((PROMPT.name, prompt), (NEGATIVE_PROMPT.name, negative)):
                if len(value) > self.limits.max_prompt_bytes:
                    raise RequestError(name, f"is {len(value)} bytes; at most {self.limits.max_prompt_bytes} allowed")
                texts.append(value.decode("utf-8"))
        return texts


@dataclass
class Pending:
    """One denoiser request in flight: its sender and job; `done` once its final is sent."""

    request: object
    sender: object
    job_id: str
    preview: bool
    job: DenoiseJob
    deadline: float = math.inf  # time.monotonic() past which the stage stops the job itself
    done: bool = False

    def stopped(self) -> Exception | None:
        """Why the job must stop now, or None."""
        if self.request.is_cancelled() or cancel.is_cancelled(self.job_id):
            return Cancelled("by the client")
        if time.monotonic() > self.deadline:
            return DeadlineExceeded("the denoiser's own limit (limit_deadline_s) passed")
        return None

    def finish(self, result) -> None:
        self.done = True
        send_final(self.sender, result)


def stage_error(exc: Exception):
    """A decoupled stage's failure, in band (see STAGE_ERROR)."""
    return response({STAGE_ERROR.name: bytes_tensor(redacted(exc))})


class DenoiserModel:
    """The denoising loop (torch): embeddings and controls in, latents out.

    Decoupled: a progress response after every step, then the latents (or the error) with the
    final flag. With `max_batch_size` > 1 (`serve --denoiser-batch`), Triton hands over several
    requests at once and those with the same controls (size, frames, steps, guidance, shift,
    cache) run as one batch; each keeps its own seed, progress and cancellation.
    """

    def initialize(self, args: dict) -> None:
        from wan_triton.contract import Family
        from wan_triton.pipeline import preview
        from wan_triton.serving.ranks import Core, Ranks
        from wan_triton.serving.settings import ServeSettings

        context = ModelContext(args)
        self.limits = limits_of(context.config)
        self.device = context.device
        if self.device.startswith("cuda"):
            import torch

            # The instance's GPU becomes the current device: kernels, streams and allocations that
            # name no device (diffusers' and peft's among them) land there, not on GPU 0.
            torch.cuda.set_device(self.device)
        self.core = Core(context.checkpoint(), self.device)
        self.denoiser, self.geometry = self.core.denoiser, self.core.geometry
        # serve --parallel: this instance is rank 0 of a group whose other ranks it starts (ranks.py).
        self.parallel = ServeSettings.from_environment().parallel
        self.ranks = None
        if self.parallel.world > 1:
            self.ranks = Ranks(self.parallel, self.core, context.checkpoint())
            print(f"{context.name}: rank 0 of {self.parallel.world} ({self.parallel})", flush=True)
        # The preview map, fitted once on the CPU to this checkpoint's VAE (freed after).
        self.preview = preview.fit(self.core.checkpoint.vae()).to(self.device)
        print(f"{context.name}: preview projection fitted to the VAE, R^2 {self.preview.r2:.3f}", flush=True)
        self._warm_up(Family.from_checkpoint(self.core.checkpoint.root))
        self.metrics = Recorder(context.name)
        self.metrics.prime(STEPS_TOTAL)

    def _warm_up(self, family) -> None:
        """One step at the smallest size, so that the first request pays no first-call costs. A
        compiled transformer (serve --compile, --quantize) is warmed with a guidance batch of two and
        with no dimension of 1 (torch.compile specialises those), so that its one dynamic graph is
        built here and serves every request."""
        width = self.denoiser.transformer.config.text_dim
        compiled = self.core.acceleration.compiled
        frames = 2 if compiled else 1  # latent frames
        side = self.geometry.spatial_multiple * self.parallel.sequence * (2 if compiled else 1)
        warm = {}  # what the checkpoint's transformer cannot run without
        latent = side // self.geometry.vae_spatial
        z = self.denoiser.latent_channels
        pixel_frames = (frames - 1) * self.geometry.vae_temporal + 1
        if family.animate:  # latent frames after the character's; one face frame each
            warm[CONDITION_LATENTS.name] = np.zeros(
                (1, z + self.geometry.vae_temporal, 1 + frames, latent, latent), np.float32
            )
            warm[POSE_LATENTS.name] = np.zeros((1, z, frames, latent, latent), np.float32)
            face = self.geometry.face_side
            warm[FACE_PIXELS.name] = np.zeros((1, pixel_frames, face, face, 3), np.uint8)
        elif family.concat_condition:
            warm[IMAGE_LATENTS.name] = np.zeros((1, z, frames, latent, latent), np.float32)
        if family.s2v:  # one latent frame of noise: 4 video frames of audio features
            config = self.denoiser.transformer.config
            warm[AUDIO_FEATURES.name] = np.zeros((1, config.audio_layers, config.audio_dim, 4 * frames), np.float32)
            warm[REFERENCE_LATENTS.name] = np.zeros((1, z, 1, latent, latent), np.float32)
        if family.vace:
            channels = self.denoiser.transformer.config.vace_in_channels
            warm[CONTROL_LATENTS.name] = np.zeros((1, channels, frames, latent, latent), np.float32)
        if family.image_tokens:
            tokens = self.denoiser.transformer.config.get("pos_embed_seq_len") or 4  # FLF2V: two frames' worth
            warm[IMAGE_EMBEDS.name] = np.zeros((1, tokens, self.denoiser.transformer.config.image_dim), np.float32)
        embeds = np.zeros((1, 8, width), np.float32)
        # guidance 2 with a compiled transformer: the guidance batch of two
        controls = Controls(side, side, pixel_frames, 1, 2.0 if compiled else 1.0)
        self._denoise(DenoiseJob(embeds, embeds if compiled else None, controls, [0], warm))

    def finalize(self) -> None:
        if self.ranks is not None:
            self.ranks.close()

    def _denoise(self, job: DenoiseJob, callback=None) -> np.ndarray:
        self.core.check(job)  # before any rank starts: a refused job leaves the group in step
        return (self.ranks or self.core).run(job, callback)

    def execute(self, requests: list) -> None:
        batches: dict[tuple, list[Pending]] = {}
        for request in requests:
            sender = request.get_response_sender()
            try:
                job = self._job(request, sender)
                if job.stopped():
                    raise Cancelled("before the first step")  # cancelled while queued: no work (R10)
            except CallerRefused as exc:  # not an entry, so not a BLS caller: a real error response
                send_final(sender, failure(exc)[1])
                continue
            except Exception as exc:
                send_final(sender, stage_error(exc))
                continue
            batches.setdefault(job.job.batch_key(), []).append(job)
        for jobs in batches.values():  # each batch on its own: a failure in one never skips the next's finals
            try:
                self._run(jobs)
            except Exception as exc:
                for job in jobs:
                    if not job.done:
                        job.finish(stage_error(exc))
        if self.ranks is not None:
            self.ranks.end_if_broken()

    def _job(self, request, sender) -> Pending:
        check_caller(request)
        names = [PROMPT_EMBEDS.name, NEGATIVE_EMBEDS.name, *DENOISER_CONTROLS, *CONDITIONING, LORA_NAMES.name]
        given = inputs(request, [*names, LORA_SCALES.name, JOB_ID.name, WANT_PREVIEW.name])
        if LORA_NAMES.name in given and given[LORA_NAMES.name].size > self.limits.max_loras:
            raise RequestError(LORA_NAMES.name, f"1 to {self.limits.max_loras} allowed")
        job = DenoiseJob.from_tensors(given)
        self._bound(job.controls)
        return Pending(
            request,
            sender,
            text(given[JOB_ID.name]) if JOB_ID.name in given else "",
            bool(given[WANT_PREVIEW.name].reshape(-1)[0]) if WANT_PREVIEW.name in given else False,
            job,
            time.monotonic() + self.limits.deadline_s,
        )

    def _bound(self, controls: Controls) -> None:
        """The work a request asks for, within the server's limits, whoever sent it (R27)."""
        limits: Limits = self.limits
        height, width = controls.height, controls.width
        bounds = {
            "height": (height, 1, limits.max_side),
            "width": (width, 1, limits.max_side),
            "num_frames": (controls.num_frames, 1, limits.max_frames),
            "num_inference_steps": (controls.num_inference_steps, 1, limits.max_steps),
        }
        for name, (value, low, high) in bounds.items():
            if not low <= value <= high:
                raise RequestError(name, f"is {value}; {low} to {high} allowed")
        if height * width > limits.max_area:
            raise RequestError("height", f"{height}x{width} is over {limits.max_area} pixels")
        method, threshold = controls.cache_method, controls.cache_threshold
        if method not in CACHE_METHODS:
            raise RequestError("cache_method", f"is {method!r}; choose from {', '.join(CACHE_METHODS)}")
        if not 0.0 <= threshold <= limits.max_cache_threshold:
            raise RequestError("cache_threshold", f"is {threshold}; 0 to {limits.max_cache_threshold} allowed")
        takes = CACHE_METHODS[method]
        interval = controls.cache_interval
        if takes and takes[0] == "cache_interval" and not 2 <= interval <= limits.max_cache_interval:
            raise RequestError("cache_interval", f"is {interval}; 2 to {limits.max_cache_interval} allowed")
        self.parallel.check_request(height, width, controls.num_frames, method, self.geometry)
        self.core.acceleration.check_request(method)

    def _run(self, jobs: list[Pending]) -> None:
        started = time.perf_counter()

        def after_step(index: int, total: int, latents) -> None:
            # Polled every step: a cancel stops a job within one step (R9); the batch goes on
            # for the others, and stops when none is left.
            for row, job in enumerate(jobs):
                if job.done:
                    continue
                reason = job.stopped()
                if reason is not None:
                    job.finish(stage_error(type(reason)(f"{reason}, after step {index + 1} of {total}")))
                    continue
                step, steps, elapsed = PROGRESS_TENSORS
                values = {
                    step.name: np.array([[index + 1]], np.int32),
                    steps.name: np.array([[total]], np.int32),
                    elapsed.name: np.array([[(time.perf_counter() - started) * 1e3]], np.float32),
                }
                if job.preview:  # the first latent frame, projected to RGB: no VAE decode per step
                    values[PREVIEW_FRAME.name] = self.preview.frame(latents[row], PREVIEW_SIDE)[None]
                job.sender.send(response(values))
                self.metrics.add(STEPS_TOTAL)
            if all(job.done for job in jobs):
                raise Cancelled("every job of the batch")

        try:
            latents = self._denoise(DenoiseJob.batched([pending.job for pending in jobs]), after_step)
        except Exception as exc:
            for job in jobs:
                if not job.done:
                    job.finish(stage_error(exc))
            return
        for row, job in enumerate(jobs):
            if not job.done:
                job.finish(response({LATENTS.name: latents[row : row + 1]}))


class VaeDecoderModel:
    """Latents to uint8 frames through the exported chunk graphs (ONNX Runtime); with TAIL_FRAMES, the
    last frames as floats too (Wan2.2 Animate's next segment starts from them, S2V's next clip's motion)."""

    def initialize(self, args: dict) -> None:
        from wan_triton import onnx_runtime as rt
        from wan_triton.pipeline.layout import open_checkpoint

        context = ModelContext(args)
        self.decode = rt.device_chunks(context.folder, VAE_DECODER, context.device, to_uint8=True)
        self.config = open_checkpoint(context.checkpoint()).config("vae")
        self._decode(np.zeros((1, self.config["z_dim"], 2, 2, 2), np.float32))

    def _decode(self, latents: np.ndarray, tail: int = 0) -> dict[str, np.ndarray]:
        """[1, F, H, W, 3] uint8: the cache and the conversion stay on the device (DeviceChunks)."""
        from wan_triton.pipeline.vae import denormalize

        frames, last = self.decode.with_tail("decoder", denormalize(latents, self.config), tail)
        return {FRAMES.name: frames} if not tail else {FRAMES.name: frames, TAIL.name: last}

    def execute(self, requests: list) -> list:
        def one(request):
            given = inputs(request, [LATENTS.name, TAIL_FRAMES.name])
            tail = int(given[TAIL_FRAMES.name].reshape(-1)[0]) if TAIL_FRAMES.name in given else 0
            if not 0 <= tail <= MOTION_FRAMES:  # what Animate (1 or 5 frames) and S2V (73) hand over
                raise RequestError(TAIL_FRAMES.name, f"is {tail}; 0 to {MOTION_FRAMES} allowed")
            return response(self._decode(given[LATENTS.name], tail))

        return per_request(requests, from_entry(one))


class VaeEncoderModel:
    """uint8 frames to normalised latents through the exported chunk graphs (ONNX Runtime); with
    CLIP_FRAMES, the frames padded with blank ones to that length first (Wan I2V's condition); for
    VACE, a reference letterboxed onto CANVAS, a blank clip, or a clip encoded apart around its
    mask (models.VACE_MASK); for Animate, the previous segment's last frames (HEAD, floats) first."""

    def initialize(self, args: dict) -> None:
        from wan_triton import onnx_runtime as rt
        from wan_triton.contract import Geometry
        from wan_triton.pipeline.layout import open_checkpoint

        context = ModelContext(args)
        self.limits = limits_of(context.config)
        self.encode = rt.device_chunks(context.folder, VAE_ENCODER, context.device)
        checkpoint = open_checkpoint(context.checkpoint())
        self.config = checkpoint.config("vae")
        side = Geometry.from_checkpoint(checkpoint.root).vae_spatial
        self._latents(np.zeros((1, 3, 1, side, side), np.float32))

    def _latents(self, video: np.ndarray) -> np.ndarray:
        from wan_triton.pipeline.vae import normalize

        moments = self.encode("encoder", video)  # the cache stays on the device
        return normalize(moments[:, : self.config["z_dim"]], self.config)

    def _bounded(self, given: VaeInput) -> VaeInput:
        """Whatever the caller, the clip within the size and length a request may have (R27)."""
        limits = self.limits
        if given.canvas is not None:  # the output's size
            height, width = given.canvas
            if not (0 < height <= limits.max_side and 0 < width <= limits.max_side):
                raise RequestError(CANVAS.name, f"is {height}x{width}; sides 1 to {limits.max_side} allowed")
            if height * width > limits.max_area:
                raise RequestError(CANVAS.name, f"{height}x{width} is over {limits.max_area} pixels")
        if given.head is not None:  # float frames given as they are
            frames, height, width = given.head.shape[2:]
            if not (frames <= limits.max_frames and height * width <= limits.max_area):
                raise RequestError(HEAD.name, f"{frames} frames of {height}x{width} is over the limits")
        blank = given.frames is None and (given.head is None or given.canvas is not None)
        clip = given.clip_frames
        if blank and (given.canvas is None or clip is None or not 1 <= clip <= limits.max_frames):
            raise RequestError(FRAMES.name, f"absent: a blank clip needs {CANVAS.name} and {CLIP_FRAMES.name}")
        return given

    def execute(self, requests: list) -> list:
        from wan_triton.pipeline.vae import encode_input

        def one(request):
            given = inputs(request, [FRAMES.name, CLIP_FRAMES.name, VACE_MASK.name, CANVAS.name, HEAD.name])
            return response({LATENTS.name: encode_input(self._latents, self._bounded(VaeInput.from_tensors(given)))})

        return per_request(requests, from_entry(one))


class ImageEncoderModel:
    """Wan2.1 I2V: the image to CLIP image tokens (the checkpoint's processor, then ONNX Runtime)."""

    def initialize(self, args: dict) -> None:
        from wan_triton import onnx_runtime as rt
        from wan_triton.pipeline.image import ImageEncoder, onnx_image_encoder
        from wan_triton.pipeline.layout import open_checkpoint

        context = ModelContext(args)
        session = rt.session(context.folder / ONNX_FILES[IMAGE_ENCODER]["model"], context.device)
        processor = open_checkpoint(context.checkpoint()).image_processor()
        self.encoder = ImageEncoder(processor, onnx_image_encoder(session))
        self.encoder(np.zeros((16, 16, 3), np.uint8))

    def execute(self, requests: list) -> list:
        return per_request(
            requests,
            from_entry(
                lambda r: response(
                    {IMAGE_EMBEDS.name: self.encoder(inputs(r, [IMAGE_PIXELS.name])[IMAGE_PIXELS.name][0])}
                )
            ),
        )


class AudioEncoderModel:
    """Wan2.2-S2V: the request's audio (mono at conditioning.AUDIO_RATE) to wav2vec2's features per video frame
    at 16 fps, in whole clips (wan_triton/s2v/audio.py): resampled to 16 kHz with librosa, the hidden states
    through the exported graph (ONNX Runtime), then taken per frame."""

    def initialize(self, args: dict) -> None:
        from wan_triton import onnx_runtime as rt

        context = ModelContext(args)
        self.limits = limits_of(context.config)
        self.session = rt.session(context.folder / ONNX_FILES[AUDIO_ENCODER]["model"], context.device)
        self._features(np.zeros(4410, np.float32))

    def _features(self, samples: np.ndarray) -> np.ndarray:
        import torch

        from wan_triton.conditioning import AUDIO_RATE
        from wan_triton.repository import AUDIO_GRAPH_INPUT
        from wan_triton.s2v import audio

        def hidden(values: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(self.session.run(None, {AUDIO_GRAPH_INPUT: values})[0])

        return audio.features(samples, AUDIO_RATE, hidden)

    def execute(self, requests: list) -> list:
        from wan_triton.conditioning import AUDIO_RATE

        def one(request):
            samples = inputs(request, [AUDIO_SAMPLES.name])[AUDIO_SAMPLES.name].reshape(-1)
            longest = self.limits.max_media_seconds
            if not 0 < samples.size <= longest * AUDIO_RATE:  # bounded as a request's (R27)
                raise RequestError(AUDIO_SAMPLES.name, f"has {samples.size} samples; 1 to {longest:g} s allowed")
            return response({AUDIO_FEATURES.name: self._features(samples)})

        return per_request(requests, from_entry(one))


class VideoEncoderModel:
    """uint8 frames (and mono audio) to MP4 bytes, in this process: raw frames never reach the
    client by default."""

    def initialize(self, args: dict) -> None:
        from wan_triton.video import encode_mp4

        self.encode = encode_mp4
        self.encode(np.zeros((1, 16, 16, 3), np.uint8), 16)

    def execute(self, requests: list) -> list:
        from wan_triton.conditioning import AUDIO_RATE

        def one(request):
            given = inputs(request, [FRAMES.name, FPS.name, AUDIO_SAMPLES.name])
            audio = given[AUDIO_SAMPLES.name][0] if AUDIO_SAMPLES.name in given else None
            fps = int(given[FPS.name].reshape(-1)[0])
            return response({VIDEO.name: bytes_tensor(self.encode(given[FRAMES.name][0], fps, audio, AUDIO_RATE))})

        return per_request(requests, from_entry(one))
