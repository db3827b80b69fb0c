"""Stage 3: the denoising loop, the one place the transformer runs.

It follows diffusers' WanPipeline step for step (same scheduler, flow shift, guidance and
Wan2.2 expert switch) with one difference: positive and negative prompts go through the
transformer as one batch of two, one forward per step instead of two.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from wan_triton.contract import Geometry
from wan_triton.pipeline import text_cache
from wan_triton.pipeline.step_cache import StepCache
from wan_triton.stage_io import DenoiseJob

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    """The transformer's dtype where none is asked for: bf16 on a GPU (Wan's own), fp32 on a CPU."""
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


@dataclass
class Guide:
    """What conditions one request besides its prompts; normalised latents, float32."""

    # I2V. Models that concatenate a condition (Wan I2V): the latents of the image followed by
    # blank frames, the whole clip. Wan2.2 TI2V (expand_timesteps): the latents of the image alone.
    image_latents: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None  # Wan2.1 I2V: CLIP image tokens [1, T, D]; FLF2V [1, 2T, D]
    last_frame: bool = False  # Wan2.1 FLF2V: the condition's last frame is given too
    video_latents: torch.Tensor | None = None  # V2V: the input video's latents, noised to `strength`
    strength: float = 1.0
    # VACE (wan_triton/vace.py): what the VACE blocks take, [1, C, reference_frames + F, H, W]; the
    # noise has the reference frames too, and they are dropped from the result.
    control_latents: torch.Tensor | None = None
    conditioning_scale: float = 1.0
    reference_frames: int = 0
    # Wan2.2 Animate, one segment (wan_triton/animate.py): the condition beside the noise on the input
    # channels, mask included [1, 20, 1 + F, H, W]; the pose video's latents [1, 16, F, H, W]; the face
    # video's pixels [1, 3, frames, s, s] in [-1, 1] (blank, -1, for the unconditional branch).
    condition_latents: torch.Tensor | None = None
    pose_latents: torch.Tensor | None = None  # also Wan2.2-S2V's pose video, the same shape as the noise
    face_pixels: torch.Tensor | None = None
    # Wan2.2-S2V, one clip (wan_triton/s2v/): wav2vec2's features per video frame [1, layers, dim, 4 F] (zeroed
    # for the unconditional branch), the reference image's latent frame [1, C, 1, H, W], the previous clip's
    # last frames' latents [1, C, 19, H, W] (None for the first clip).
    audio_features: torch.Tensor | None = None
    reference_latents: torch.Tensor | None = None
    motion_latents: torch.Tensor | None = None


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
    vae_temporal: int = 4  # frames per latent frame: the I2V mask is folded by it
    batch_cfg: bool = True
    # serve --parallel cfg=2 (wan_triton/parallel.py): this rank runs one branch of the guidance
    # and gathers the other's prediction each step.
    guidance_split: object | None = None
    cache_text: bool = True  # the text's projections once per request (pipeline/text_cache.py): exact

    @classmethod
    def from_checkpoint(
        cls, checkpoint, dtype: torch.dtype = torch.float32, device: str = "cpu", gguf: dict | None = None
    ) -> Denoiser:
        """`gguf`: {expert: file} for the experts whose weights come from a GGUF file (serve --gguf)."""
        gguf = gguf or {}
        return cls(
            transformer=checkpoint.transformer("transformer", dtype, device, gguf.get("transformer")),
            transformer_2=checkpoint.transformer("transformer_2", dtype, device, gguf.get("transformer_2"))
            if checkpoint.has("transformer_2")
            else None,
            scheduler_class=checkpoint.scheduler_class,
            scheduler_config=checkpoint.scheduler_config,
            boundary_ratio=checkpoint.boundary_ratio,
            expand_timesteps=checkpoint.expand_timesteps,
            vae_temporal=Geometry.from_checkpoint(checkpoint.root).vae_temporal,
        )

    def experts(self) -> dict[str, torch.nn.Module]:
        """The transformers by their checkpoint folder: Wan2.2 A14B's low-noise expert is `transformer_2`."""
        named = {"transformer": self.transformer, "transformer_2": self.transformer_2}
        return {name: model for name, model in named.items() if model is not None}

    def transformers(self) -> list[torch.nn.Module]:
        return list(self.experts().values())

    @property
    def latent_channels(self) -> int:
        """Channels of the latents (and of the noise); I2V models take more in (the condition)."""
        return self.transformer.config.out_channels

    def _concat_condition(self, image_latents: torch.Tensor, last_frame: bool) -> torch.Tensor:
        """Wan I2V's condition: a mask of the given frames (the first, and for FLF2V the last),
        one channel per frame folded into each latent frame, then the clip's latents; as diffusers
        builds it."""
        batch, _, frames, height, width = image_latents.shape
        temporal = self.vae_temporal
        mask = image_latents.new_zeros(batch, 1, (frames - 1) * temporal + 1, height, width)
        mask[:, :, 0] = 1
        if last_frame:
            mask[:, :, -1] = 1
        mask = torch.cat([mask[:, :, :1].repeat_interleave(temporal, dim=2), mask[:, :, 1:]], dim=2)
        mask = mask.view(batch, -1, temporal, height, width).transpose(1, 2)
        return torch.cat([mask, image_latents], dim=1)

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
        self,
        model,
        latents,
        timestep,
        embeds,
        negative_embeds,
        guidance: float,
        cached: bool,
        inputs: tuple,
        unconditional_first: bool = False,
        position: dict | None = None,
    ) -> torch.Tensor:
        """One step's noise prediction; `inputs` are the model's extra inputs for the conditional and
        the unconditional branch (`_model_inputs`). The guidance batch is [conditional, unconditional],
        or the other way round for a step cache that reads it so (`unconditional_first`). `position`
        (step_index, sigma, num_inference_steps) is the step's place in the schedule, for the step
        caches that ask (SeaCache)."""
        conditional, unconditional = inputs

        def forward(name: str, hidden, steps, text, extra: dict) -> torch.Tensor:
            # Cache hooks keep their state per named call (diffusers' cache_context).
            with model.cache_context(name, **(position or {})) if cached else contextlib.nullcontext():
                return model(
                    hidden_states=hidden, timestep=steps, encoder_hidden_states=text, return_dict=False, **extra
                )[0]

        hidden = latents.to(model.dtype)
        if negative_embeds is None:
            return forward("cond", hidden, timestep, embeds, conditional)
        if self.guidance_split is not None:
            branch = self.guidance_split.branch
            names, texts = ("cond", "uncond"), (embeds, negative_embeds)
            mine = forward(names[branch], hidden, timestep, texts[branch], inputs[branch])
            cond, uncond = self.guidance_split.gather(mine)
        elif self.batch_cfg:
            first, second = (unconditional, conditional) if unconditional_first else (conditional, unconditional)
            texts = (negative_embeds, embeds) if unconditional_first else (embeds, negative_embeds)
            both = forward(
                "cond_uncond",
                hidden.repeat(2, 1, 1, 1, 1),
                timestep.repeat(2, *([1] * (timestep.dim() - 1))),
                torch.cat(texts),
                {name: _both(name, value, second[name]) for name, value in first.items()},
            )
            cond, uncond = both.chunk(2)[::-1] if unconditional_first else both.chunk(2)
        else:
            cond = forward("cond", hidden, timestep, embeds, conditional)
            uncond = forward("uncond", hidden, timestep, negative_embeds, unconditional)
        return uncond + guidance * (cond - uncond)

    def _model_inputs(self, guide: Guide, device, dtype) -> tuple[dict, dict]:
        """What the transformer takes besides the latents, timestep and text, per guidance branch; nothing
        for an input it goes without (its default, None: FasterCache would try to split a None given)."""
        inputs: dict[str, torch.Tensor] = {}
        if guide.image_embeds is not None:
            image_embeds = guide.image_embeds.to(device, dtype)
            pairs = self.transformer.config.get("pos_embed_seq_len")
            if pairs:
                # FLF2V: the transformer takes each frame's tokens as a row, [2B, T, D], and joins each
                # pair under its positional embedding.
                image_embeds = image_embeds.reshape(-1, pairs // 2, image_embeds.shape[-1])
            inputs["encoder_hidden_states_image"] = image_embeds
        if guide.control_latents is not None:  # VACE: one scale per control block, as diffusers expands a float
            blocks = len(self.transformer.config.vace_layers)
            inputs["control_hidden_states"] = guide.control_latents.to(device, dtype)
            inputs["control_hidden_states_scale"] = torch.full((blocks,), guide.conditioning_scale).to(device, dtype)
        if guide.pose_latents is not None:
            inputs["pose_hidden_states"] = guide.pose_latents.to(device, dtype)
        if guide.audio_features is not None:
            inputs["reference_latents"] = guide.reference_latents.to(device, dtype)
            if guide.motion_latents is not None:
                inputs["motion_latents"] = guide.motion_latents.to(device, dtype)
            audio = guide.audio_features.to(device, dtype)
            # the release's unconditional branch: the prompt's negative, and silence
            return {**inputs, "audio_features": audio}, {**inputs, "audio_features": torch.zeros_like(audio)}
        if guide.face_pixels is not None:
            face = guide.face_pixels.to(device, dtype)
            # diffusers' unconditional face: `face * 0 - 1`, a blank (black) face video
            return {**inputs, "face_pixel_values": face}, {**inputs, "face_pixel_values": face * 0 - 1}
        return inputs, inputs

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
        cache: StepCache | None = None,
        guide: Guide | None = None,
    ) -> torch.Tensor:
        """Denoise float32 noise `latents` [B, C, F, H, W]; `negative_embeds` None means no guidance.
        Follows diffusers' WanPipeline, WanImageToVideoPipeline or WanVideoToVideoPipeline, as the
        checkpoint and `guide` say."""
        guide = guide or Guide()
        device = latents.device
        dtype = self.transformer.dtype
        embeds = prompt_embeds.to(device, dtype)
        negative = negative_embeds.to(device, dtype) if negative_embeds is not None else None
        inputs = self._model_inputs(guide, device, dtype)
        scheduler = self.scheduler(flow_shift)
        scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps, start = scheduler.timesteps, 0
        if guide.video_latents is not None:
            # V2V: start part-way, from the input's latents noised to the first remaining timestep.
            kept = min(int(num_inference_steps * guide.strength), num_inference_steps)
            start = (num_inference_steps - kept) * scheduler.order
            timesteps = timesteps[start:]
        scheduler.set_begin_index(start)
        if guide.video_latents is not None:
            batch = timesteps[:1].repeat(latents.shape[0])
            latents = scheduler.add_noise(guide.video_latents.to(device, latents.dtype), latents, batch)
        condition, keep = None, None  # keep: 1 where the model denoises, 0 on the given image's frame
        if guide.image_latents is not None:
            condition = guide.image_latents.to(device, latents.dtype)
            if self.expand_timesteps:
                keep = torch.ones_like(latents[:1, :1])
                keep[:, :, 0] = 0
            else:
                condition = self._concat_condition(condition, guide.last_frame)
        if guide.condition_latents is not None:  # Animate: built whole by the caller
            condition = guide.condition_latents.to(device, latents.dtype)
        boundary = None
        if self.boundary_ratio is not None and self.transformer_2 is not None:
            boundary = self.boundary_ratio * scheduler.config.num_train_timesteps
        guidance_2 = guidance_scale if guidance_scale_2 is None else guidance_scale_2
        cached = cache is not None
        unconditional_first = cached and cache.unconditional_first
        if unconditional_first and (negative is None or not self.batch_cfg or self.guidance_split is not None):
            raise ValueError(f"step cache {cache.method!r} needs guidance batched in one forward")
        separate_branches = negative is not None and not self.batch_cfg and self.guidance_split is None
        if cached and cache.one_call_per_step and separate_branches:
            raise ValueError(f"step cache {cache.method!r} needs both guidance branches in one forward")
        now = [timesteps[0]]  # the step being run, for the caches that ask (FasterCache)
        with (
            text_cache.applied(self.transformers()) if self.cache_text else contextlib.nullcontext(),
            cache.applied(self.transformers(), len(timesteps), lambda: int(now[0]))
            if cached
            else contextlib.nullcontext(),
        ):
            for index, t in enumerate(timesteps):
                now[0] = t
                model, guidance = self._expert(t, boundary, guidance_scale, guidance_2)
                hidden = latents
                if keep is not None:
                    hidden = (1 - keep) * condition + keep * latents
                elif condition is not None:
                    hidden = torch.cat([latents, condition], dim=1)
                if self.expand_timesteps:
                    # One timestep per latent token (patches of 2x2), as Wan2.2 TI2V expects;
                    # 0 on the given image's frame.
                    mask = keep if keep is not None else torch.ones_like(latents[:1, :1])
                    tokens = mask[0, 0, :, ::2, ::2] * t
                    timestep = tokens.flatten()[None].expand(latents.shape[0], -1)
                else:
                    timestep = t.expand(latents.shape[0])
                position = {
                    "step_index": index,
                    "sigma": float(scheduler.sigmas[start + index]),
                    "num_inference_steps": len(timesteps),
                }
                noise = self._predict(
                    model, hidden, timestep, embeds, negative, guidance, cached, inputs, unconditional_first, position
                )
                latents = scheduler.step(noise, t, latents, return_dict=False)[0]
                if callback is not None:
                    callback(index, len(timesteps), latents)
        if keep is not None:
            latents = (1 - keep) * condition + keep * latents
        return latents[:, :, guide.reference_frames :]


def _both(name: str, conditional, unconditional):
    """An extra model input for the batch of both guidance branches: per-sample tensors joined, the
    rest (VACE's per-block scales, an absent input) as they are."""
    if not isinstance(conditional, torch.Tensor) or name == "control_hidden_states_scale":
        return conditional
    return torch.cat([conditional, unconditional])


def guide_of(conditioning: dict[str, np.ndarray]) -> Guide:
    """A job's conditioning tensors (models.GUIDE, by name) as the loop's Guide."""
    from wan_triton.pipeline.vae import to_video

    def tensor(name: str) -> torch.Tensor | None:
        return torch.from_numpy(conditioning[name]) if name in conditioning else None

    def value(name: str, default):
        return type(default)(conditioning[name].reshape(-1)[0]) if name in conditioning else default

    face = conditioning.get("face_pixels")  # uint8 [1, F, s, s, 3] -> [1, 3, F, s, s] in [-1, 1]
    return Guide(
        image_latents=tensor("image_latents"),
        image_embeds=tensor("image_embeds"),
        last_frame=value("last_frame", False),
        video_latents=tensor("video_latents"),
        strength=value("strength", 1.0),
        control_latents=tensor("control_latents"),
        conditioning_scale=value("conditioning_scale", 1.0),
        reference_frames=value("reference_frames", 0),
        condition_latents=tensor("condition_latents"),
        pose_latents=tensor("pose_latents"),
        face_pixels=None if face is None else torch.from_numpy(to_video(face[0])),
        audio_features=tensor("audio_features"),
        reference_latents=tensor("reference_latents"),
        motion_latents=tensor("motion_latents"),
    )


def run_job(
    denoiser: Denoiser,
    job: DenoiseJob,
    geometry: Geometry,
    device: str,
    mag_ratios: tuple[float, ...] = (),
    callback: StepCallback | None = None,
) -> np.ndarray:
    """A job's latents, float32 on the host: the one place a job (stage_io.DenoiseJob) becomes the
    loop's arguments, its noise drawn from its seeds and its latent shape read off its conditioning."""
    from wan_triton.pipeline import step_cache
    from wan_triton.pipeline.latents import initial_latents, latent_shape

    controls, guide = job.controls, guide_of(job.conditioning)
    frames = controls.num_frames + guide.reference_frames * geometry.vae_temporal  # VACE: the references' frames
    shape = latent_shape(controls.height, controls.width, frames, denoiser.latent_channels, geometry)
    if guide.condition_latents is not None:  # Animate: the condition's latent frames (the character's first)
        shape = (*shape[:2], guide.condition_latents.shape[2], *shape[3:])
    if guide.audio_features is not None:  # S2V: one clip, its latent frames from its audio's video frames
        shape = (*shape[:2], guide.audio_features.shape[-1] // geometry.vae_temporal, *shape[3:])
    draw = int(job.conditioning["noise_draw"].reshape(-1)[0]) if "noise_draw" in job.conditioning else 0
    guided = job.negative is not None and controls.guidance_scale > 1.0
    latents = denoiser(
        torch.cat([initial_latents(seed, shape, device, draw) for seed in job.seeds]),
        torch.from_numpy(job.embeds),
        torch.from_numpy(job.negative) if guided else None,
        controls.num_inference_steps,
        controls.guidance_scale,
        controls.guidance_scale_2,
        controls.flow_shift,
        callback,
        step_cache.of_request(controls.cache_method, controls.cache_threshold, controls.cache_interval, mag_ratios),
        guide,
    )
    return latents.float().cpu().numpy()
