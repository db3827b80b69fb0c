"""The denoiser stage (Python backend): the denoising loop in torch, a progress response per step, jobs
with equal controls batched, each job stopped within a step by its cancel or deadline; rank 0 of the
parallel group in `serve --parallel` (serving/ranks.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from wan_triton.contract import CACHE_METHODS, PREVIEW_SIDE, Limits, RequestError
from wan_triton.serving import cancel
from wan_triton.serving.glue import (
    CallerRefused,
    Cancelled,
    DeadlineExceeded,
    ModelContext,
    bytes_tensor,
    check_caller,
    failure,
    inputs,
    redacted,
    response,
    send_final,
    text,
)
from wan_triton.serving.metrics import STEPS_TOTAL, Recorder
from wan_triton.serving.models import (
    AUDIO_FEATURES,
    CONDITION_LATENTS,
    CONTROL_LATENTS,
    DENOISER_CONTROLS,
    FACE_PIXELS,
    IMAGE_EMBEDS,
    IMAGE_LATENTS,
    JOB_ID,
    LATENTS,
    LORA_NAMES,
    LORA_SCALES,
    NEGATIVE_EMBEDS,
    POSE_LATENTS,
    PREVIEW_FRAME,
    PROGRESS_TENSORS,
    PROMPT_EMBEDS,
    REFERENCE_LATENTS,
    STAGE_ERROR,
    WANT_PREVIEW,
    limits_of,
)
from wan_triton.stage_io import CONDITIONING, Controls, DenoiseJob


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
        self.parallel = ServeSettings.current().parallel
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
