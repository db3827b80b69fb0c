"""Step caches: skip transformer work on steps whose result earlier steps predict, through diffusers' hooks.

Each method is one diffusers 0.42 hook configured for one request's step count; `StepCache.applied`
puts it on the transformers for that request and takes it off afterwards, so nothing carries over.

- `first_block` (FirstBlockCache): a step runs the blocks after the first only when the first
  block's residual moved more than `threshold` (relative) since the last full step.
- `mag` (MagCache): skips while the accumulated error of the checkpoint's measured residual-magnitude
  ratios (`calibrate_mag_ratios`) stays under `threshold`, at most 3 steps in a row, never in the
  first 20% of steps.
- `taylorseer` (TaylorSeer): every `interval` steps the blocks run; in between their outputs are
  extrapolated by a first-order Taylor expansion over steps.
- `faster` (FasterCache): in the middle and late steps, the self-attention runs every `interval` steps
  (in between, extrapolated from its last two outputs), and the unconditional branch runs every 5th
  step only (in between, the conditional one's plus the last measured difference, per frequency band).
  It reads the guidance batch as [unconditional, conditional] (the denoiser orders it so for it) and
  needs the current timestep (`timestep`).
- `sea` (SeaCache): like `first_block`, a step reuses the blocks' last residual while the accumulated
  relative change of an indicator stays under `threshold`; the indicator is the latents filtered by
  their noise level (`sigma`), so it needs the step's place in the schedule (`cache_context` below).
- `pyramid` (Pyramid Attention Broadcast): in the middle steps (timesteps 100 to 800), each
  self-attention runs every `interval` steps and its last output is reused in between. Its state is
  not kept per named call, so the guidance branches must go through the transformer as one batch.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from wan_triton.contract import CACHE_METHODS, GUIDED_CACHES, MAG_RATIOS, GenerationRequest

METHODS = tuple(m for m, parameter in CACHE_METHODS.items() if parameter)
# The transformer's inputs that denoise.py joins over the guidance batch (the latents, the timestep, the
# text, and each task's conditioning).
_JOINED_INPUTS = (
    "hidden_states",
    "timestep",
    "encoder_hidden_states",
    "encoder_hidden_states_image",
    "control_hidden_states",
    "pose_hidden_states",
    "face_pixel_values",
)


@dataclass(frozen=True)
class StepCache:
    method: str
    threshold: float = 0.0  # first_block, mag, sea
    interval: int = 2  # taylorseer, faster, pyramid
    mag_ratios: tuple[float, ...] = ()  # mag: one per step of some schedule, interpolated to this one's

    @property
    def one_call_per_step(self) -> bool:
        """Whether the guidance branches must share one transformer call (the hooks' state is not per call)."""
        return self.method == "pyramid"

    @property
    def unconditional_first(self) -> bool:
        """Whether the guidance batch must be [unconditional, conditional], as FasterCache reads it."""
        return self.method in GUIDED_CACHES

    def config(self, steps: int, timestep: Callable[[], int] | None = None):
        from diffusers.hooks import (
            FasterCacheConfig,
            FirstBlockCacheConfig,
            MagCacheConfig,
            PyramidAttentionBroadcastConfig,
            SeaCacheConfig,
            TaylorSeerCacheConfig,
        )

        if self.method == "first_block":
            return FirstBlockCacheConfig(threshold=self.threshold)
        if self.method == "mag":
            if not self.mag_ratios:
                raise ValueError("MagCache needs the checkpoint's calibrated ratios (calibrate_mag_ratios)")
            return MagCacheConfig(threshold=self.threshold, num_inference_steps=steps, mag_ratios=list(self.mag_ratios))
        if self.method == "taylorseer":
            # float32 factors: the bfloat16 default costs accuracy on a CPU and buys nothing
            return TaylorSeerCacheConfig(
                cache_interval=self.interval,
                disable_cache_before_step=2,
                taylor_factors_dtype=torch.float32,
                # diffusers' defaults ("^blocks.*attn") are matched whole and miss Wan's attn1/attn2, so
                # nothing would be cached; Wan's transformer blocks are what the method extrapolates.
                cache_identifiers=[r"^blocks\.\d+$"],
            )
        if self.method == "faster":
            if timestep is None:
                raise ValueError("FasterCache needs the current timestep")
            return FasterCacheConfig(
                spatial_attention_block_skip_range=self.interval,
                current_timestep_callback=timestep,
                attention_weight_callback=lambda _: 0.5,  # diffusers' default, given so that it does not warn
                tensor_format="BCFHW",
                # Every input the denoiser joins over the guidance batch, split with the latents on a skipped step.
                _unconditional_conditional_input_kwargs_identifiers=[*_JOINED_INPUTS],
            )
        if self.method == "sea":
            # diffusers' built-in Wan adapter reads the whole input as the video, which is wrong where the
            # input carries conditioning channels (I2V, Animate): the video is the first out_channels.
            return SeaCacheConfig(threshold=self.threshold, raw_vision_callback=_video_latents)
        if self.method == "pyramid":
            if timestep is None:
                raise ValueError("Pyramid Attention Broadcast needs the current timestep")
            return PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=self.interval, current_timestep_callback=timestep
            )
        raise ValueError(f"unknown step cache {self.method!r}; choose from {', '.join(METHODS)}")

    @contextlib.contextmanager
    def applied(
        self, models: Sequence[torch.nn.Module], steps: int, timestep: Callable[[], int] | None = None
    ) -> Iterator[None]:
        configs = [self.config(steps, timestep) for _ in models]  # a bad method fails here, before any hook is on
        enabled: list[torch.nn.Module] = []
        try:
            for model, config in zip(models, configs, strict=True):
                model.enable_cache(config)
                enabled.append(model)
            yield
        finally:
            for model in enabled:
                model.disable_cache()


def _video_latents(model: torch.nn.Module, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """SeaCache's indicator input: each sample's video latents [C, F, H, W], without conditioning channels."""
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    return list(hidden[:, : model.config.out_channels].unbind(0))


def calibrate_mag_ratios(run, models: Sequence[torch.nn.Module], steps: int) -> list[float]:
    """diffusers' own MagCache calibration: `run()` one generation of `steps` steps with the calibrating
    hook on, and read the per-step ratios it prints at the end."""
    from diffusers.hooks import MagCacheConfig

    printed = io.StringIO()
    for model in models:
        model.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
    try:
        with contextlib.redirect_stdout(printed):
            run()
    finally:
        for model in models:
            model.disable_cache()
    lists = [line for line in printed.getvalue().splitlines() if line.startswith("[") and line.endswith("]")]
    if not lists:
        raise RuntimeError("MagCache calibration printed no ratios")
    return [float(v) for v in ast.literal_eval(lists[-1])]


def of_request(method: str, threshold: float, interval: int, mag_ratios: Sequence[float] = ()) -> StepCache | None:
    """A validated request's cache (contract's `cache_method` and its parameter); none for "none"."""
    if method == "none":
        return None
    return StepCache(method, float(threshold), int(interval), tuple(mag_ratios))


def load_mag_ratios(checkpoint: str | Path) -> tuple[float, ...]:
    """The checkpoint's calibrated MagCache ratios (`wan-triton calibrate-mag`), or none."""
    path = Path(checkpoint) / MAG_RATIOS
    if not path.is_file():
        return ()
    return tuple(float(r) for r in json.loads(path.read_text())["ratios"])


def write_mag_ratios(checkpoint: str | Path, ratios: Sequence[float], request: GenerationRequest) -> Path:
    """Ratios beside the checkpoint, with the request they were measured on."""
    path = Path(checkpoint) / MAG_RATIOS
    measured = {k: getattr(request, k) for k in ("prompt", "height", "width", "num_frames", "num_inference_steps")}
    path.write_text(json.dumps({"ratios": [round(r, 5) for r in ratios], "measured_on": measured}, indent=2) + "\n")
    return path
