"""What crosses from a task to a stage, typed: the denoiser's job and the VAE encoder's input.

A task (wan_triton/tasks.py) builds these; the local stages hand them to torch as they are, the
Triton stages turn them into the tensors `serving/models.py` names and the stage models turn those
back (`to_tensors` / `from_tensors`, the one place each crossing is spelled). Torch-free: the entry
models build them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from wan_triton.contract import INPUTS, GenerationRequest
from wan_triton.serving.models import (
    CANVAS,
    CLIP_FRAMES,
    FRAMES,
    GUIDE,
    HEAD,
    LORA_NAMES,
    LORA_SCALES,
    NEGATIVE_EMBEDS,
    PROMPT_EMBEDS,
    VACE_MASK,
)

_DTYPES = {spec.name: spec.numpy_dtype for spec in INPUTS}
CONDITIONING = tuple(t.name for t in GUIDE)  # the conditioning tensors a job may carry


@dataclass(frozen=True)
class Controls:
    """How a job is denoised, besides its conditioning: jobs with equal controls batch together."""

    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    guidance_scale_2: float | None = None
    flow_shift: float | None = None
    cache_method: str = "none"
    cache_threshold: float = 0.0
    cache_interval: int = 0

    @classmethod
    def of(cls, request: GenerationRequest) -> Controls:
        return cls(**{f.name: getattr(request, f.name) for f in dataclasses.fields(cls)})


CONTROLS = tuple(f.name for f in dataclasses.fields(Controls))


@dataclass
class DenoiseJob:
    """One denoiser job: prompt embeddings [B, S, D] (one row per seed), the controls, the seeds, the
    conditioning (models.GUIDE's tensors by name, with their batch axis) and the request's adapters."""

    embeds: np.ndarray
    negative: np.ndarray | None  # None: no classifier-free guidance
    controls: Controls
    seeds: list[int]
    conditioning: dict[str, np.ndarray] = field(default_factory=dict)
    lora_names: tuple[str, ...] = ()
    lora_scales: tuple[float, ...] = ()

    @classmethod
    def of(
        cls,
        request: GenerationRequest,
        embeds: np.ndarray,
        negative: np.ndarray | None,
        conditioning: dict[str, np.ndarray] | None = None,
        seed: int | None = None,
    ) -> DenoiseJob:
        unknown = set(conditioning or {}) - set(CONDITIONING)
        if unknown:
            raise ValueError(f"not conditioning: {sorted(unknown)}")
        return cls(
            embeds,
            negative,
            Controls.of(request),
            [request.seed if seed is None else seed],
            dict(conditioning or {}),
            tuple(request.lora_names),
            tuple(request.lora_scales),
        )

    def batch_key(self) -> tuple:
        """Jobs with the same key run as one batch: the same controls and adapters, no conditioning
        (conditioned jobs' inputs differ, so they run alone)."""
        alone = (id(self),) if self.conditioning else ()
        return (self.controls, self.lora_names, self.lora_scales, *alone)

    @staticmethod
    def batched(jobs: list[DenoiseJob]) -> DenoiseJob:
        """Jobs with one batch key as one job, a row per seed."""
        first = jobs[0]
        return dataclasses.replace(
            first,
            embeds=np.concatenate([job.embeds for job in jobs]),
            negative=None if first.negative is None else np.concatenate([job.negative for job in jobs]),
            seeds=[seed for job in jobs for seed in job.seeds],
        )

    def to_tensors(self) -> dict[str, np.ndarray]:
        """The denoiser model's inputs. An unset control travels as NaN (its tensors are numbers)."""
        assert len(self.seeds) == 1, "a request carries one seed"
        tensors = {PROMPT_EMBEDS.name: self.embeds, NEGATIVE_EMBEDS.name: self.embeds}
        if self.negative is not None:
            tensors[NEGATIVE_EMBEDS.name] = self.negative
        controls = {**dataclasses.asdict(self.controls), "seed": self.seeds[0]}
        for name, value in controls.items():
            value = value.encode() if isinstance(value, str) else np.nan if value is None else value
            tensors[name] = np.array([[value]], dtype=_DTYPES[name])
        if self.lora_names:
            tensors[LORA_NAMES.name] = np.array([[n.encode() for n in self.lora_names]], dtype=np.object_)
            tensors[LORA_SCALES.name] = np.array([self.lora_scales], np.float32)
        return {**tensors, **self.conditioning}

    @classmethod
    def from_tensors(cls, given: dict[str, np.ndarray]) -> DenoiseJob:
        """`to_tensors`' inverse, for the denoiser model: the negative (always sent) kept only where the
        guidance uses it."""

        def scalar(name: str):
            value = given[name].reshape(-1)[0]
            value = value.decode() if isinstance(value, bytes) else value.item()
            return None if isinstance(value, float) and math.isnan(value) else value

        controls = Controls(**{name: scalar(name) for name in CONTROLS})
        controls = dataclasses.replace(controls, cache_threshold=controls.cache_threshold or 0.0)
        names = scales = ()
        if LORA_NAMES.name in given:
            names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in given[LORA_NAMES.name].reshape(-1))
            scales = tuple(float(v) for v in given.get(LORA_SCALES.name, np.zeros(0)).reshape(-1))
        return cls(
            given[PROMPT_EMBEDS.name],
            given[NEGATIVE_EMBEDS.name] if controls.guidance_scale > 1.0 else None,
            controls,
            [int(scalar("seed"))],
            {name: given[name] for name in CONDITIONING if name in given},
            names,
            scales,
        )


@dataclass
class VaeInput:
    """What the VAE encoder encodes: uint8 `frames` [F, H, W, 3] (padded with blank frames to
    `clip_frames`: Wan I2V's condition clip), or one image letterboxed onto `canvas` (a VACE
    reference), or a blank clip of `clip_frames` on `canvas`; `head`, float frames [1, 3, F, H, W]
    in [-1, 1], in front (the frames a segment or clip hands over) or alone; with a VACE `mask`
    (uint8 [F, H, W, 3], white where generated), the clip encoded apart around it."""

    frames: np.ndarray | None = None
    clip_frames: int | None = None
    canvas: tuple[int, int] | None = None
    mask: np.ndarray | None = None
    head: np.ndarray | None = None

    def to_tensors(self) -> dict[str, np.ndarray]:
        tensors = {}
        if self.frames is not None:
            tensors[FRAMES.name] = self.frames[None]
        if self.clip_frames is not None:
            tensors[CLIP_FRAMES.name] = np.array([[self.clip_frames]], np.int32)
        if self.canvas is not None:
            tensors[CANVAS.name] = np.array([self.canvas], np.int32)
        if self.mask is not None:
            tensors[VACE_MASK.name] = self.mask[None]
        if self.head is not None:
            tensors[HEAD.name] = self.head
        return tensors

    @classmethod
    def from_tensors(cls, given: dict[str, np.ndarray]) -> VaeInput:
        return cls(
            frames=given[FRAMES.name][0] if FRAMES.name in given else None,
            clip_frames=int(given[CLIP_FRAMES.name].reshape(-1)[0]) if CLIP_FRAMES.name in given else None,
            canvas=tuple(int(s) for s in given[CANVAS.name].reshape(-1)) if CANVAS.name in given else None,
            mask=given[VACE_MASK.name][0] if VACE_MASK.name in given else None,
            head=given.get(HEAD.name),
        )
