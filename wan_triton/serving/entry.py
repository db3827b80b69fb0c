"""The entry models clients call (`wan_t2v`, `wan_i2v`, `wan_v2v`, `wan_vace`, `wan_animate`, `wan_s2v`, each
also `_stream`).
Admit once (wan_triton/admission.py: validated, checked, the media decoded), then run the task
(wan_triton/tasks.py) on the stage models by BLS (`TritonStages`).

Torch-free: they hold no weights, so several instances cost little and keep requests flowing
while the stages queue. A rejected request (INVALID_ARGUMENT) reaches no stage.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator

import numpy as np

from wan_triton import tasks
from wan_triton.admission import Served, admit
from wan_triton.contract import (
    INPUTS,
    LIST_INPUTS,
    RequestError,
    inputs_of,
    list_limit,
)
from wan_triton.repository import (
    AUDIO_ENCODER,
    DENOISER,
    IMAGE_ENCODER,
    TEXT_ENCODER,
    VAE_DECODER,
    VAE_ENCODER,
    VIDEO_ENCODER,
)
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
    ENTRIES,
    FPS,
    FRAMES,
    IMAGE_EMBEDS,
    IMAGE_PIXELS,
    JOB_ID,
    LATENTS,
    NEGATIVE_EMBEDS,
    NEGATIVE_PROMPT,
    PREVIEW_FRAME,
    PROGRESS_TENSORS,
    PROMPT,
    PROMPT_EMBEDS,
    SEED,
    TAIL,
    TAIL_FRAMES,
    VIDEO,
    WANT_PREVIEW,
    limits_of,
)
from wan_triton.serving.settings import ServeSettings
from wan_triton.stage_io import DenoiseJob, VaeInput

_DTYPES = {spec.name: spec.numpy_dtype for spec in INPUTS}


class EntryModel:
    """`wan_t2v`, `wan_i2v`, `wan_v2v`, `wan_vace`: one response per request, the video and the seed. The
    model's name says its task (models.ENTRIES)."""

    def initialize(self, args: dict) -> None:
        context = ModelContext(args)
        self.task = ENTRIES[context.name]
        self.inputs = [spec.name for spec in inputs_of(self.task)]
        self.limits = limits_of(context.config)
        settings = ServeSettings.current()  # serve --parallel, --compile, --loras: what they refuse
        self.served = Served.of_checkpoint(
            context.checkpoint(), self.limits, settings.parallel, settings.acceleration, settings.allow_list()
        )
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
        job, media = admit(raw, self.task, self.served)

        # From here on a cancel or the deadline raises the job's flag; every stage checks it.
        with cancel.watch(request, self.limits.deadline_s) as watcher:

            def progress(index: int, total: int, values: dict[str, np.ndarray]) -> None:
                if on_progress is None:
                    return
                step, steps = PROGRESS_TENSORS[:2]
                counted = {step.name: np.array([[index + 1]], np.int32), steps.name: np.array([[total]], np.int32)}
                values = {**values, **counted}
                try:
                    on_progress(values)  # with the denoiser's preview frame, when asked
                except Exception:
                    # The stream is read to its end either way; stop the denoiser within a step
                    # rather than let it finish a job whose progress cannot be delivered.
                    cancel.cancel(watcher.job_id)
                    raise

            stages = TritonStages(self.metrics, watcher, preview=job.preview and on_progress is not None)
            frames = tasks.generate(stages, job, media, self.served.family, self.served.geometry, progress)
            watcher.check()
            video = stages.encode_mp4(frames, job.fps, media.audio)
        outputs = {VIDEO.name: bytes_tensor(video), SEED.name: np.array([[job.seed]], _DTYPES[SEED.name])}
        if job.return_frames:  # opt-in by input: Triton reports every output as requested when none is
            outputs[FRAMES.name] = frames[None]
        self.metrics.add(VIDEOS_TOTAL)
        self.metrics.add(FRAMES_TOTAL, len(frames))
        return response(outputs)


class TritonStages:
    """tasks.Stages by BLS: each call one stage model's request, timed per stage (STAGE_SECONDS), the job's
    cancellation flag named to the denoiser; a stop (cancel, deadline) read between stages."""

    def __init__(self, metrics: Recorder, watcher, preview: bool = False) -> None:
        self.metrics, self.watcher, self.preview = metrics, watcher, preview

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            with cancel.waiting_on(stage):
                yield
        finally:
            self.metrics.observe(STAGE_SECONDS, time.perf_counter() - started, stage=stage)

    def _call(self, stage: str, tensors: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        with self.timed(stage):
            return call(stage, tensors, outputs)

    def encode_text(self, prompt: str, negative: str | None) -> tuple[np.ndarray, np.ndarray]:
        # the negative is always encoded: one request shape for the text encoder's batches
        given = {PROMPT.name: bytes_tensor(prompt), NEGATIVE_PROMPT.name: bytes_tensor(negative or "")}
        embeds = self._call(TEXT_ENCODER, given, [PROMPT_EMBEDS.name, NEGATIVE_EMBEDS.name])
        return embeds[PROMPT_EMBEDS.name], embeds[NEGATIVE_EMBEDS.name]

    def encode_image(self, image: np.ndarray) -> np.ndarray:
        return self._call(IMAGE_ENCODER, {IMAGE_PIXELS.name: image[None]}, [IMAGE_EMBEDS.name])[IMAGE_EMBEDS.name]

    def encode_video(self, given: VaeInput) -> np.ndarray:
        return self._call(VAE_ENCODER, given.to_tensors(), [LATENTS.name])[LATENTS.name]

    def encode_audio(self, samples: np.ndarray) -> np.ndarray:
        features = self._call(AUDIO_ENCODER, {AUDIO_SAMPLES.name: samples[None]}, [AUDIO_FEATURES.name])
        return features[AUDIO_FEATURES.name]

    def denoise(self, job: DenoiseJob, progress: tasks.Progress | None) -> np.ndarray:
        tensors = {**job.to_tensors(), JOB_ID.name: bytes_tensor(self.watcher.job_id)}
        if self.preview:
            tensors[WANT_PREVIEW.name] = np.array([[True]])
        step, steps = PROGRESS_TENSORS[:2]

        def relay(values: dict[str, np.ndarray]) -> None:
            if progress is not None:
                progress(int(values[step.name].reshape(-1)[0]) - 1, int(values[steps.name].reshape(-1)[0]), values)

        try:
            with self.timed(DENOISER):
                latents = call_streaming(
                    DENOISER, tensors, [LATENTS.name], [t.name for t in (*PROGRESS_TENSORS, PREVIEW_FRAME)], relay
                )
        except StageError:
            self.watcher.check()  # a stopped job reads as its cause, not as a stage failure
            raise
        self.watcher.check()
        return latents[LATENTS.name]

    def decode(self, latents: np.ndarray, tail_frames: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        tensors = {LATENTS.name: latents}
        if tail_frames:
            tensors[TAIL_FRAMES.name] = np.array([[tail_frames]], np.int32)
        decoded = self._call(VAE_DECODER, tensors, [FRAMES.name, TAIL.name] if tail_frames else [FRAMES.name])
        return decoded[FRAMES.name][0], decoded.get(TAIL.name)

    def encode_mp4(self, frames: np.ndarray, fps: int, audio: np.ndarray | None) -> bytes:
        tensors = {FRAMES.name: frames[None], FPS.name: np.array([[fps]], _DTYPES[FPS.name])}
        if audio is not None:
            tensors[AUDIO_SAMPLES.name] = audio[None]
        return self._call(VIDEO_ENCODER, tensors, [VIDEO.name])[VIDEO.name].reshape(-1)[0]

    def check(self) -> None:
        self.watcher.check()


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
