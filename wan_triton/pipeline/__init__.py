"""The Wan pipeline as stages, composed in-process.

text.PromptEncoder -> latents.initial_latents -> denoise.Denoiser -> vae (decode) ->
video.encode_mp4. Each stage has explicit inputs and outputs; the Triton models run them one
per model, and `Pipeline` runs them in one process (tests, benchmarks, parity with diffusers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wan_triton.contract import GenerationRequest, Geometry
from wan_triton.pipeline.checkpoint import Checkpoint
from wan_triton.pipeline.denoise import Denoiser, StepCallback
from wan_triton.pipeline.latents import initial_latents, latent_shape
from wan_triton.pipeline.text import PromptEncoder, torch_encoder
from wan_triton.pipeline.vae import chunked_decode, to_frames, torch_decode
from wan_triton.video import encode_mp4

# Normalised latents [1, C, F, h, w] -> video [1, 3, F', H, W] in [-1, 1].
DecodeFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Pipeline:
    prompt_encoder: PromptEncoder
    denoiser: Denoiser
    decode: DecodeFn
    geometry: Geometry
    device: str = "cpu"

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        repository: str | Path | None = None,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Pipeline:
        """Torch for every stage, or, given an exported `repository`, ONNX Runtime for the
        text encoder and the VAE decoder (what the Triton models run)."""
        checkpoint = Checkpoint.open(path)
        if repository is None:
            vae = checkpoint.vae(dtype, device)
            encode = torch_encoder(checkpoint.text_encoder(dtype, device))
            decode: DecodeFn = lambda latents: torch_decode(vae, latents)  # noqa: E731
        else:
            from wan_triton import onnx_runtime as rt
            from wan_triton.repository import ONNX_FILES, TEXT_ENCODER, VAE_DECODER, version_dir

            text_dir, vae_dir = version_dir(repository, TEXT_ENCODER), version_dir(repository, VAE_DECODER)
            encode = rt.encoder_fn(rt.session(text_dir / ONNX_FILES[TEXT_ENCODER]["model"], device))
            first = rt.runner(rt.session(vae_dir / ONNX_FILES[VAE_DECODER]["first"], device))
            step = rt.runner(rt.session(vae_dir / ONNX_FILES[VAE_DECODER]["step"], device))
            vae_config = checkpoint.config("vae")
            decode = lambda latents: chunked_decode(first, step, latents, vae_config)  # noqa: E731
        return cls(
            prompt_encoder=PromptEncoder(checkpoint.tokenizer(), encode),
            denoiser=Denoiser.from_checkpoint(checkpoint, dtype, device),
            decode=decode,
            geometry=Geometry.from_checkpoint(checkpoint.root),
            device=device,
        )

    def frames(self, request: GenerationRequest, callback: StepCallback | None = None) -> np.ndarray:
        """Run every stage but the MP4 encode: frames [F, H, W, 3] float32 in [0, 1]."""
        cfg = request.do_classifier_free_guidance
        prompts = [request.prompt, request.negative_prompt] if cfg else [request.prompt]
        embeds = torch.from_numpy(self.prompt_encoder(prompts))
        shape = latent_shape(
            request.height, request.width, request.num_frames, self.denoiser.in_channels, self.geometry
        )
        latents = self.denoiser(
            initial_latents(request.seed, shape, self.device),
            embeds[:1],
            embeds[1:] if cfg else None,
            request.num_inference_steps,
            request.guidance_scale,
            request.guidance_scale_2,
            request.flow_shift,
            callback,
            request.cache_threshold or None,
        )
        return to_frames(self.decode(latents.float().cpu().numpy()))

    def video(self, request: GenerationRequest) -> bytes:
        return encode_mp4(self.frames(request), request.fps)
