"""`wan_t2v`: the model clients call. Validates once, then runs the stages by BLS.

Torch-free: it holds no weights, so several instances cost little and keep requests flowing
while the stages queue. A rejected request (INVALID_ARGUMENT) reaches no stage.
"""

from __future__ import annotations

import numpy as np

from wan_triton.contract import INPUT_NAMES, NUMPY_DTYPES, Geometry, Limits, RequestError, validate
from wan_triton.repository import DENOISER, T2V, TEXT_ENCODER, VAE_DECODER, VIDEO_ENCODER
from wan_triton.serving import cancel
from wan_triton.serving.configs import (
    DENOISER_CONTROLS,
    FPS,
    FRAMES,
    JOB_ID,
    LATENTS,
    MODELS,
    NEGATIVE_EMBEDS,
    NEGATIVE_PROMPT,
    PROGRESS_TENSORS,
    PROMPT,
    PROMPT_EMBEDS,
    SEED,
    VIDEO,
)
from wan_triton.serving.glue import (
    Cancelled,
    ModelContext,
    StageError,
    bytes_tensor,
    call,
    call_streaming,
    error,
    inputs,
    per_request,
    response,
)

_DTYPES = {t.name: NUMPY_DTYPES[t.dtype] for t in MODELS[T2V].inputs}


class TextToVideoModel:
    """`wan_t2v`: one response per request, the video and the seed."""

    def initialize(self, args: dict) -> None:
        context = ModelContext(args)
        self.geometry = Geometry.from_checkpoint(context.checkpoint())
        parameters = context.config.get("parameters", {})
        self.limits = Limits.from_mapping(
            {key.removeprefix("limit_"): value["string_value"] for key, value in parameters.items()}
        )

    def execute(self, requests: list) -> list:
        return per_request(requests, lambda request: self._generate(request, on_progress=None))

    def _generate(self, request, on_progress):
        if request.is_cancelled():
            raise Cancelled("while queued")  # never started (R10)
        given = inputs(request, INPUT_NAMES)
        for name, array in given.items():
            if array.size != 1:
                return error(
                    f"{name}: one value per request (shape [1, 1]), got shape {list(array.shape)}", "INVALID_ARG"
                )
        try:
            job = validate({name: array.reshape(-1)[0] for name, array in given.items()}, self.geometry, self.limits)
        except RequestError as exc:
            return error(str(exc), "INVALID_ARG")

        def tensor(name: str) -> np.ndarray:
            value = getattr(job, name)
            return np.array([[np.nan if value is None else value]], dtype=_DTYPES[name])

        embeds = call(
            TEXT_ENCODER,
            {PROMPT.name: bytes_tensor(job.prompt), NEGATIVE_PROMPT.name: bytes_tensor(job.negative_prompt)},
            [PROMPT_EMBEDS.name, NEGATIVE_EMBEDS.name],
        )
        job_id = cancel.new_job_id()

        def progress(values: dict) -> None:
            if request.is_cancelled():
                cancel.cancel(job_id)  # the denoiser sees it after its current step
            elif on_progress is not None:
                on_progress(values)

        try:
            latents = call_streaming(
                DENOISER,
                {**embeds, **{n: tensor(n) for n in DENOISER_CONTROLS}, JOB_ID.name: bytes_tensor(job_id)},
                [LATENTS.name],
                [t.name for t in PROGRESS_TENSORS],
                progress,
            )
        except StageError:
            if request.is_cancelled() or cancel.is_cancelled(job_id):
                raise Cancelled("during denoising") from None
            raise
        finally:
            cancel.clear(job_id)
        if request.is_cancelled():
            raise Cancelled("after denoising")
        frames = call(VAE_DECODER, latents, [FRAMES.name])
        video = call(VIDEO_ENCODER, {**frames, FPS.name: tensor(FPS.name)}, [VIDEO.name])
        outputs = {VIDEO.name: video[VIDEO.name], SEED.name: tensor(SEED.name)}
        if job.return_frames:  # opt-in by input: Triton reports every output as requested when none is
            outputs[FRAMES.name] = frames[FRAMES.name]
        return response(outputs)
