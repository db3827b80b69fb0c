"""Stage 3: the denoising loop, the one place the transformer runs.

It follows diffusers' WanPipeline step for step (same scheduler, flow shift, guidance and
Wan2.2 expert switch) with one difference: positive and negative prompts go through the
transformer as one batch of two, one forward per step instead of two.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

# Called after every step with (step index, total steps, latents); raising aborts the loop
# (cancellation hangs on it) and progress reporting reads it.
StepCallback = Callable[[int, int, torch.Tensor], None]


@dataclass
class Denoiser:
    transformer: torch.nn.Module
    scheduler_class: type
    scheduler_config: dict
    transformer_2: torch.nn.Module | None = None  # Wan2.2 A14B: the low-noise expert
    boundary_ratio: float | None = None
    expand_timesteps: bool = False  # Wan2.2 TI2V: one timestep per latent token
    batch_cfg: bool = True

    @classmethod
    def from_checkpoint(cls, checkpoint, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Denoiser:
        return cls(
            transformer=checkpoint.transformer("transformer", dtype, device),
            transformer_2=checkpoint.transformer("transformer_2", dtype, device)
            if checkpoint.has("transformer_2")
            else None,
            scheduler_class=checkpoint.scheduler_class,
            scheduler_config=checkpoint.scheduler_config,
            boundary_ratio=checkpoint.boundary_ratio,
            expand_timesteps=checkpoint.expand_timesteps,
        )

    @property
    def in_channels(self) -> int:
        return self.transformer.config.in_channels

    def scheduler(self, flow_shift: float | None = None):
        """A fresh scheduler per request: schedulers carry state, and the shift may differ."""
        overrides = {}
        if flow_shift is not None:
            key = "flow_shift" if "flow_shift" in self.scheduler_config else "shift"
            overrides[key] = flow_shift
        return self.scheduler_class.from_config(self.scheduler_config, **overrides)

    def _expert(self, t: torch.Tensor, boundary: float | None, guidance: float, guidance_2: float):
        if boundary is None or t >= boundary:
            return self.transformer, guidance
        return self.transformer_2, guidance_2

    def _predict(
        self, model, latents, timestep, embeds, negative_embeds, guidance: float, cached: bool
    ) -> torch.Tensor:
        def forward(name: str, hidden, steps, text) -> torch.Tensor:
            # Cache hooks keep their state per named call (diffusers' cache_context).
            with model.cache_context(name) if cached else contextlib.nullcontext():
                return model(hidden_states=hidden, timestep=steps, encoder_hidden_states=text, return_dict=False)[0]

        hidden = latents.to(model.dtype)
        if negative_embeds is None:
            return forward("cond", hidden, timestep, embeds)
        if self.batch_cfg:
            both = forward(
                "cond_uncond",
                hidden.repeat(2, 1, 1, 1, 1),
                timestep.repeat(2, *([1] * (timestep.dim() - 1))),
                torch.cat([embeds, negative_embeds]),
            )
            cond, uncond = both.chunk(2)
        else:
            cond = forward("cond", hidden, timestep, embeds)
            uncond = forward("uncond", hidden, timestep, negative_embeds)
        return uncond + guidance * (cond - uncond)

    @contextlib.contextmanager
    def _step_cache(self, threshold: float | None) -> Iterator[bool]:
        """First-block cache for one request (diffusers' hook): a step runs the remaining blocks
        only when the first block's residual moved more than `threshold` since the last full step."""
        models = [m for m in (self.transformer, self.transformer_2) if m is not None] if threshold else []
        for model in models:
            from diffusers.hooks import FirstBlockCacheConfig

            model.enable_cache(FirstBlockCacheConfig(threshold=threshold))
        try:
            yield bool(models)
        finally:
            for model in models:
                model.disable_cache()

    @torch.inference_mode()
    def __call__(
        self,
        latents: torch.Tensor,
        prompt_embeds: torch.Tensor,
        negative_embeds: torch.Tensor | None,
        num_inference_steps: int,
        guidance_scale: float,
        guidance_scale_2: float | None = None,
        flow_shift: float | None = None,
        callback: StepCallback | None = None,
        cache_threshold: float | None = None,
    ) -> torch.Tensor:
        """Denoise float32 `latents` [B, C, F, H, W]; `negative_embeds` None means no guidance."""
        device = latents.device
        dtype = self.transformer.dtype
        embeds = prompt_embeds.to(device, dtype)
        negative = negative_embeds.to(device, dtype) if negative_embeds is not None else None
        scheduler = self.scheduler(flow_shift)
        scheduler.set_timesteps(num_inference_steps, device=device)
        scheduler.set_begin_index(0)
        timesteps = scheduler.timesteps
        boundary = None
        if self.boundary_ratio is not None and self.transformer_2 is not None:
            boundary = self.boundary_ratio * scheduler.config.num_train_timesteps
        guidance_2 = guidance_scale if guidance_scale_2 is None else guidance_scale_2
        with self._step_cache(cache_threshold) as cached:
            for index, t in enumerate(timesteps):
                model, guidance = self._expert(t, boundary, guidance_scale, guidance_2)
                if self.expand_timesteps:
                    # One timestep per latent token (patches of 2x2), as Wan2.2 TI2V expects.
                    tokens = torch.ones_like(latents[0, 0, :, ::2, ::2]) * t
                    timestep = tokens.flatten()[None].expand(latents.shape[0], -1)
                else:
                    timestep = t.expand(latents.shape[0])
                noise = self._predict(model, latents, timestep, embeds, negative, guidance, cached)
                latents = scheduler.step(noise, t, latents, return_dict=False)[0]
                if callback is not None:
                    callback(index, len(timesteps), latents)
        return latents
