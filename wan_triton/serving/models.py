"""Every model the repository serves, defined once: its tensors (names, dtypes, shapes), batching,
queue and instances. The models take their tensor names from here and `configs.py` renders the same
definitions into `config.pbtxt`, so configs and code cannot drift apart.

The models (every stub) import this module and never `configs.py`: rendering needs tritonclient's
protobuf classes, which only `serve` and the tests load (tests/test_image.py checks the stubs' imports).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wan_triton.contract import (
    ANIMATE,
    IMAGE_TO_VIDEO,
    INPUTS,
    LIST_INPUTS,
    OUTPUTS,
    PREVIEW,
    PROGRESS,
    REQUIRED_INPUTS,
    SPEECH_TO_VIDEO,
    TEXT_TO_VIDEO,
    VACE,
    VIDEO_TO_VIDEO,
    Family,
    Geometry,
    Limits,
    inputs_of,
)
from wan_triton.repository import (
    AUDIO_ENCODER,
    DENOISER,
    ENTRY_MODELS,
    IMAGE_ENCODER,
    TEXT_ENCODER,
    VAE_DECODER,
    VAE_ENCODER,
    VIDEO_ENCODER,
)

if TYPE_CHECKING:
    from wan_triton.admission import Served

VARIABLE = -1


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # Triton's dtype name, as in the contract
    dims: tuple[int, ...] = (1,)
    optional: bool = False


@dataclass(frozen=True)
class Model:
    """One Python-backend model: its tensors, batching, queue and instances."""

    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    max_batch_size: int = 1
    batch_delay_us: int = 0
    max_queue_size: int = 8  # past it Triton rejects at once (R12); stages: see ENTRY_INSTANCES
    instances: int = 1
    heavy: bool = True  # holds weights: a GPU instance where there is a GPU
    decoupled: bool = False  # sends any number of responses, then a final flag


_dtypes = {s.name: s.dtype for s in INPUTS}


def entry_inputs(task: str) -> tuple[Tensor, ...]:
    """A task's entry inputs: the contract's (lists of any length), its own media input required."""
    required = REQUIRED_INPUTS.get(task, ())
    return tuple(
        Tensor(s.name, s.dtype, (VARIABLE,) if s.name in LIST_INPUTS else (1,), s.optional and s.name not in required)
        for s in inputs_of(task)
    )


PROMPT, NEGATIVE_PROMPT, FPS = (Tensor(n, _dtypes[n]) for n in ("prompt", "negative_prompt", "fps"))
WANT_PREVIEW = Tensor("preview", "BOOL", optional=True)
PROMPT_EMBEDS = Tensor("prompt_embeds", "FP32", (VARIABLE, VARIABLE))  # [sequence, d_model]
NEGATIVE_EMBEDS = Tensor("negative_prompt_embeds", "FP32", (VARIABLE, VARIABLE))
LATENTS = Tensor("latents", "FP32", (VARIABLE,) * 4)  # [C, F, h, w]
FRAMES = Tensor("frames", "UINT8", (VARIABLE, VARIABLE, VARIABLE, 3))  # [F, H, W, RGB]
VIDEO, SEED = (Tensor(s.name, s.dtype) for s in OUTPUTS)
# Denoiser controls are the contract's own tensors, validated upstream; unset optional floats
# travel as NaN (which the contract never lets a client send).
PROGRESS_TENSORS = tuple(Tensor(s.name, s.dtype) for s in PROGRESS)
# With `preview`: the denoiser adds a preview of the first latent frame to each progress response,
# projected to RGB in the denoiser (pipeline/preview.py) [h, w, 3]; the streaming entry forwards it.
PREVIEW_FRAME = Tensor(PREVIEW.name, PREVIEW.dtype, (VARIABLE, VARIABLE, 3))
# A decoupled stage reports failure in band, as this output of its final response: tritonserver
# 2.51 never delivers an error response of a decoupled model to a BLS caller, which then waits
# forever (seen here: an entry stub stuck in its response iterator, blocking shutdown).
STAGE_ERROR = Tensor("error", "BYTES")
# Every stage requires it; only the entries know its value (glue.STAGE_KEY_ENV, R27).
STAGE_KEY = Tensor("stage_key", "BYTES")
JOB_ID = Tensor("job_id", "BYTES", optional=True)  # names the job's cancellation flag (serving/cancel.py)
# Conditioning. The entry decodes the media (conditioning.py) and sends pixels to the encoders:
# the image to `image_encoder` (CLIP tokens out), frames to `vae_encoder` (latents out; for Wan
# I2V the image padded with blank frames to CLIP_FRAMES), and the results to the denoiser.
IMAGE_PIXELS = Tensor("image", "UINT8", (VARIABLE, VARIABLE, 3))  # [H, W, RGB]
IMAGE_EMBEDS = Tensor("image_embeds", "FP32", (VARIABLE, VARIABLE))  # [tokens, dim]
CLIP_FRAMES = Tensor("clip_frames", "INT32", optional=True)
IMAGE_LATENTS = Tensor("image_latents", "FP32", (VARIABLE,) * 4, optional=True)
VIDEO_LATENTS = Tensor("video_latents", "FP32", (VARIABLE,) * 4, optional=True)
STRENGTH = Tensor("strength", _dtypes["strength"], optional=True)
LAST_FRAME = Tensor("last_frame", "BOOL", optional=True)  # Wan2.1 FLF2V: the clip ends with the last frame
AUDIO_SAMPLES = Tensor("audio", "FP32", (VARIABLE,), optional=True)  # mono at conditioning.AUDIO_RATE
# VACE (wan_triton/vace.py). CANVAS is the output's [height, width]: the encoder letterboxes one
# reference image onto it, or without frames encodes a blank clip of CLIP_FRAMES at that size. With
# VACE_MASK (one white pixel: all of it) it encodes the clip outside the mask and inside it apart
# (2 x z_dim channels out). The entry assembles the control latents; the denoiser runs them beside
# the noise and drops the REFERENCE_FRAMES latent frames they put in front.
VACE_MASK = Tensor("mask", "UINT8", (VARIABLE, VARIABLE, VARIABLE, 3), optional=True)  # [F, H, W, RGB]
CANVAS = Tensor("canvas", "INT32", (2,), optional=True)
CONTROL_LATENTS = Tensor("control_latents", "FP32", (VARIABLE,) * 4, optional=True)
CONDITIONING_SCALE = Tensor("conditioning_scale", _dtypes["conditioning_scale"], optional=True)
REFERENCE_FRAMES = Tensor("reference_frames", "INT32", optional=True)
# Wan2.2 Animate, one segment at a time (wan_triton/animate.py): the condition beside the noise (mask
# included), the pose video's latents, the face video's frames, and which of the seed's draws the
# noise is (diffusers draws each segment's in turn). The decoder also returns the segment's last
# frames as floats (TAIL), which the encoder takes in front of the next segment's clip (HEAD).
CONDITION_LATENTS = Tensor("condition_latents", "FP32", (VARIABLE,) * 4, optional=True)
POSE_LATENTS = Tensor("pose_latents", "FP32", (VARIABLE,) * 4, optional=True)
FACE_PIXELS = Tensor("face_pixels", "UINT8", (VARIABLE, VARIABLE, VARIABLE, 3), optional=True)  # [F, s, s, RGB]
NOISE_DRAW = Tensor("noise_draw", "INT32", optional=True)
TAIL_FRAMES = Tensor("tail_frames", "INT32", optional=True)
TAIL = Tensor("tail", "FP32", (3, VARIABLE, VARIABLE, VARIABLE))  # [3, F, H, W] in [-1, 1]
HEAD = Tensor("head", "FP32", (3, VARIABLE, VARIABLE, VARIABLE), optional=True)
# Wan2.2-S2V, one clip at a time (wan_triton/s2v/): the audio encoder turns the request's audio (mono at
# conditioning.AUDIO_RATE) into wav2vec2's features per video frame; the denoiser takes one clip's span of
# them, the reference image's latent frame and, from the second clip on, the latents of the motion frames
# (the decoder hands the last MOTION_FRAMES frames over as TAIL, the encoder encodes them alone as HEAD).
AUDIO_FEATURES = Tensor("audio_features", "FP32", (VARIABLE,) * 3, optional=True)  # [layers, dim, frames]
REFERENCE_LATENTS = Tensor("reference_latents", "FP32", (VARIABLE,) * 4, optional=True)
MOTION_LATENTS = Tensor("motion_latents", "FP32", (VARIABLE,) * 4, optional=True)
GUIDE = (
    IMAGE_LATENTS,
    dataclasses.replace(IMAGE_EMBEDS, optional=True),
    VIDEO_LATENTS,
    STRENGTH,
    LAST_FRAME,
    CONTROL_LATENTS,
    CONDITIONING_SCALE,
    REFERENCE_FRAMES,
    CONDITION_LATENTS,
    POSE_LATENTS,
    FACE_PIXELS,
    NOISE_DRAW,
    AUDIO_FEATURES,
    REFERENCE_LATENTS,
    MOTION_LATENTS,
)
# The request's adapters (lora.py), as the contract's lists.
LORA_NAMES, LORA_SCALES = (Tensor(n, _dtypes[n], (VARIABLE,), optional=True) for n in ("lora_names", "lora_scales"))
DENOISER_CONTROLS = (
    "height",
    "width",
    "num_frames",
    "num_inference_steps",
    "guidance_scale",
    "guidance_scale_2",
    "flow_shift",
    "seed",
    "cache_method",
    "cache_threshold",
    "cache_interval",
)

MODELS: dict[str, Model] = {
    TEXT_ENCODER: Model(
        TEXT_ENCODER,
        (PROMPT, NEGATIVE_PROMPT),
        (PROMPT_EMBEDS, NEGATIVE_EMBEDS),
        max_batch_size=8,
        batch_delay_us=2000,
        max_queue_size=32,
    ),
    DENOISER: Model(
        DENOISER,
        (
            PROMPT_EMBEDS,
            NEGATIVE_EMBEDS,
            *(Tensor(n, _dtypes[n]) for n in DENOISER_CONTROLS),
            JOB_ID,
            WANT_PREVIEW,
            *GUIDE,
            LORA_NAMES,
            LORA_SCALES,
        ),
        (LATENTS, *PROGRESS_TENSORS, PREVIEW_FRAME, STAGE_ERROR),
        decoupled=True,
    ),
    VAE_DECODER: Model(VAE_DECODER, (LATENTS, TAIL_FRAMES), (FRAMES, TAIL)),
    VAE_ENCODER: Model(
        VAE_ENCODER, (dataclasses.replace(FRAMES, optional=True), CLIP_FRAMES, VACE_MASK, CANVAS, HEAD), (LATENTS,)
    ),
    IMAGE_ENCODER: Model(IMAGE_ENCODER, (IMAGE_PIXELS,), (IMAGE_EMBEDS,)),
    AUDIO_ENCODER: Model(
        AUDIO_ENCODER,
        (dataclasses.replace(AUDIO_SAMPLES, optional=False),),
        (dataclasses.replace(AUDIO_FEATURES, optional=False),),
    ),
    VIDEO_ENCODER: Model(VIDEO_ENCODER, (FRAMES, FPS, AUDIO_SAMPLES), (VIDEO,), heavy=False),
}
STAGES = tuple(MODELS)
MODELS = {name: dataclasses.replace(model, inputs=(*model.inputs, STAGE_KEY)) for name, model in MODELS.items()}
# The entries, one plain and one streaming per task: they validate, then call the stages above
# by BLS (docs/ARCHITECTURE.md says why). Their queue size is a limit (Limits.max_queue_size).
ENTRIES: dict[str, str] = {name: task for task, names in ENTRY_MODELS.items() for name in names}
STREAMING = tuple(stream for _, stream in ENTRY_MODELS.values())
for _name, _task in ENTRIES.items():
    _stream = _name in STREAMING
    MODELS[_name] = Model(
        _name,
        entry_inputs(_task),
        (VIDEO, SEED, FRAMES, *((*PROGRESS_TENSORS, PREVIEW_FRAME) if _stream else ())),
        instances=4 if _task == TEXT_TO_VIDEO else 2,  # torch-free and cheap; the stages queue behind them
        heavy=False,
        decoupled=_stream,
    )


# Capacity is decided once, at the entries (R31): each entry instance has at most one call out to a
# stage at a time, and only entries may call the stages (STAGE_KEY), so stage queues this deep never
# refuse admitted work. A request past the entries' instances and queues is refused there, at once,
# with UNAVAILABLE, before any stage ran.
ENTRY_INSTANCES = sum(MODELS[name].instances for name in ENTRIES)
for _name in STAGES:
    MODELS[_name] = dataclasses.replace(
        MODELS[_name], max_queue_size=max(MODELS[_name].max_queue_size, ENTRY_INSTANCES)
    )


def served_models(family: Family) -> list[str]:
    """What a checkpoint's server loads: the entries of its tasks and the stages they call."""
    tasks = family.tasks
    names = [TEXT_ENCODER, DENOISER, VAE_DECODER, VIDEO_ENCODER]
    names += [VAE_ENCODER] if {IMAGE_TO_VIDEO, VIDEO_TO_VIDEO, VACE, ANIMATE, SPEECH_TO_VIDEO} & set(tasks) else []
    names += [IMAGE_ENCODER] if family.image_tokens else []
    names += [AUDIO_ENCODER] if family.s2v else []
    return names + [name for name, task in ENTRIES.items() if task in tasks]


LIMIT_PREFIX = "limit_"
# The checkpoint's sizes (contract.Geometry) in the entries' configs: a front end (the OpenAI API)
# validates a request by the served contract before it queues it, without the checkpoint.
GEOMETRY_PREFIX = "geometry_"
# The rest of what admission needs (admission.Served: family, parallel, acceleration, calibration, adapter
# names), one JSON parameter of the entries' configs.
SERVED_PARAMETER = "served"
# The stages that bound their own work too (R27): the only callers they answer are the entries,
# and they do not rely on that alone. Prompt bytes at the text encoder; size, frames, steps,
# adapters and the deadline at the denoiser.
BOUNDED_STAGES = (TEXT_ENCODER, DENOISER)


def _parameters(config: dict, prefix: str) -> dict[str, str]:
    """A parsed model config's parameters that start with `prefix`, the prefix taken off."""
    parameters = config.get("parameters", {}).items()
    return {key.removeprefix(prefix): value["string_value"] for key, value in parameters if key.startswith(prefix)}


def limits_of(config: dict) -> Limits:
    """The limits written into a model's config (`initialize`'s parsed model_config)."""
    return Limits.from_mapping(_parameters(config, LIMIT_PREFIX))


def served_of(config: dict) -> Served | None:
    """What an entry's config says is served (admission.Served); None in a config `serve` did not write."""
    from wan_triton.admission import Served

    text = config.get("parameters", {}).get(SERVED_PARAMETER, {}).get("string_value")
    geometry = geometry_of(config)
    return None if text is None or geometry is None else Served.from_json(text, geometry, limits_of(config))


def geometry_of(config: dict) -> Geometry | None:
    """The checkpoint's geometry written into an entry's config by `serve`; None in a config without it."""
    values = {key: int(value) for key, value in _parameters(config, GEOMETRY_PREFIX).items()}
    return Geometry(**values) if values else None
