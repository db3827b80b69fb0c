"""`wan_t2v`: the model clients call. Validates once, then runs the stages by BLS.

Torch-free: it holds no weights, so several instances cost little and keep requests flowing
while the stages queue. A rejected request (INVALID_ARGUMENT) reaches no stage.
"""

from __future__ import annotations

import numpy as np

from wan_triton.contract import INPUT_NAMES, NUMPY_DTYPES, Geometry, Limits, RequestError, validate
from wan_triton.repository import DENOISER, T2V, TEXT_ENCODER, VAE_DECODER, VIDEO_ENCODER
from wan_triton.serving.configs import (
    DENOISER_CONTROLS,
    FPS,
    FRAMES,
    LATENTS,
    MODELS,
    NEGATIVE_EMBEDS,
    NEGATIVE_PROMPT,
    PROMPT,
    PROMPT_EMBEDS,
    SEED,
    VIDEO,
)
from wan_triton.serving.glue import ModelContext, bytes_tensor, call, error, inputs, per_request, response

_DTYPES = {t.name: NUMPY_DTYPES[t.dtype] for t in MODELS[T2V].inputs}


class TextToVideoModel:
    def initialize(self, args: dict) -> None:
        context = ModelContext(args)
        self.geometry = Geometry.from_checkpoint(context.checkpoint())
        parameters = context.config.get("parameters", {})
        self.limits = Limits.from_mapping(
            {key.removeprefix("limit_"): value["string_value"] for key, value in parameters.items()}
        )

    def execute(self, requests: list) -> list:
        return per_request(requests, self._generate)

    def _generate(self, request):
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
        latents = call(DENOISER, {**embeds, **{n: tensor(n) for n in DENOISER_CONTROLS}}, [LATENTS.name])
        frames = call(VAE_DECODER, latents, [FRAMES.name])
        video = call(VIDEO_ENCODER, {**frames, FPS.name: tensor(FPS.name)}, [VIDEO.name])
        outputs = {VIDEO.name: video[VIDEO.name], SEED.name: tensor(SEED.name)}
        if job.return_frames:  # opt-in by input: Triton reports every output as requested when none is
            outputs[FRAMES.name] = frames[FRAMES.name]
        return response(outputs)
