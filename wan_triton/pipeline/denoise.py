"""Stage 3: the denoising loop, the one place the transformer runs.

It follows diffusers' WanPipeline step for step (same scheduler, flow shift, guidance and
Wan2.2 expert switch) with one difference: positive and negative prompts go through the
transformer as one batch of two, one forward per step instead of two.
"""

from __future__ import annotations

from collections.abc import Callable
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

    def _predict(self, model, latents, timestep, embeds, negative_embeds, guidance: float) -> torch.Tensor:
        dtype = model.dtype
        if negative_embeds is None:
            return model(
                hidden_states=latents.to(dtype), timestep=timestep, encoder_hidden_states=embeds, return_dict=False
            )[0]
        if self.batch_cfg:
            both = model(
                hidden_states=latents.to(dtype).repeat(2, 1, 1, 1, 1),
                timestep=timestep.repeat(2, *([1] * (timestep.dim() - 1))),
                encoder_hidden_states=torch.cat([embeds, negative_embeds]),
                return_dict=False,
            )[0]
            cond, uncond = both.chunk(2)
        else:
            cond = model(
                hidden_states=latents.to(dtype), timestep=timestep, encoder_hidden_states=embeds, return_dict=False
            )[0]
            uncond = model(
                hidden_states=latents.to(dtype),
                timestep=timestep,
                encoder_hidden_states=negative_embeds,
                return_dict=False,
            )[0]
        return uncond + guidance * (cond - uncond)

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
        for index, t in enumerate(timesteps):
            model, guidance = self._expert(t, boundary, guidance_scale, guidance_2)
            if self.expand_timesteps:
                # One timestep per latent token (patches of 2x2), as Wan2.2 TI2V expects.
                timestep = (
                    (torch.ones_like(latents[0, 0, :, ::2, ::2]) * t).flatten()[None].expand(latents.shape[0], -1)
                )
            else:
                timestep = t.expand(latents.shape[0])
            noise = self._predict(model, latents, timestep, embeds, negative, guidance)
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
            if callback is not None:
                callback(index, len(timesteps), latents)
        return latents
