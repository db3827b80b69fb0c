"""The Wan pipeline as stages, composed in-process.

text.PromptEncoder (+ image.ImageEncoder, the VAE's encoder, wav2vec2 for S2V) -> denoise.Denoiser ->
the VAE's decoder -> video.encode_mp4, each stage with explicit inputs and outputs. The Triton models
run them one per model; here `LocalStages` runs them in one process under the same task definitions
(wan_triton/tasks.py), for `generate --checkpoint`, the benchmarks and the parity tests with diffusers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wan_triton import tasks
from wan_triton.conditioning import AUDIO_RATE, Media
from wan_triton.contract import Family, GenerationRequest, Geometry
from wan_triton.pipeline import step_cache
from wan_triton.pipeline.denoise import Denoiser, StepCallback, run_job
from wan_triton.pipeline.image import ImageEncoder, onnx_image_encoder, torch_image_encoder
from wan_triton.pipeline.layout import open_checkpoint
from wan_triton.pipeline.text import PromptEncoder, torch_encoder
from wan_triton.pipeline.vae import (
    chunked_decode,
    chunked_encode,
    encode_input,
    to_frames,
    torch_decode,
    torch_encode,
)
from wan_triton.stage_io import DenoiseJob, VaeInput
from wan_triton.video import encode_mp4

# Normalised latents [1, C, F, h, w] -> video [1, 3, F', H, W] in [-1, 1], and back.
DecodeFn = Callable[[np.ndarray], np.ndarray]
EncodeVideoFn = Callable[[np.ndarray], np.ndarray]
# uint8 image [H, W, 3] -> CLIP image tokens [1, T, D] (Wan2.1 I2V).
EncodeImageFn = Callable[[np.ndarray], np.ndarray]
# Mono samples at AUDIO_RATE -> wav2vec2's features per video frame [1, L, D, F] (Wan2.2-S2V).
EncodeAudioFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Pipeline:
    prompt_encoder: PromptEncoder
    denoiser: Denoiser
    decode: DecodeFn
    geometry: Geometry
    family: Family
    encode_video: EncodeVideoFn | None = None
    encode_image: EncodeImageFn | None = None
    encode_audio: EncodeAudioFn | None = None
    device: str = "cpu"
    mag_ratios: tuple[float, ...] = ()  # the checkpoint's MagCache calibration (step_cache.MAG_RATIOS)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        repository: str | Path | None = None,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Pipeline:
        """Torch for every stage, or, given an exported `repository`, ONNX Runtime for the
        encoders and the VAE (what the Triton models run). A diffusers folder or a Wan2.2-S2V release."""
        from wan_triton.s2v import audio

        checkpoint = open_checkpoint(path)
        family = Family.from_checkpoint(checkpoint.root)
        vae_config = checkpoint.config("vae")
        encode_image: EncodeImageFn | None = None
        encode_audio: EncodeAudioFn | None = None
        if repository is None:
            vae = checkpoint.vae(dtype, device)
            encode = torch_encoder(checkpoint.text_encoder(dtype, device))
            decode: DecodeFn = lambda latents: torch_decode(vae, latents)  # noqa: E731
            encode_video: EncodeVideoFn = lambda video: torch_encode(vae, video)  # noqa: E731
            if family.image_tokens:
                tower = torch_image_encoder(checkpoint.image_encoder(dtype, device))
                encode_image = ImageEncoder(checkpoint.image_processor(), tower)
            if family.s2v:
                hidden = audio.torch_hidden(checkpoint.audio_encoder(torch.float32, device))
                encode_audio = lambda samples: audio.features(samples, AUDIO_RATE, hidden)  # noqa: E731
        else:
            from wan_triton import onnx_runtime as rt
            from wan_triton.repository import (
                AUDIO_ENCODER,
                AUDIO_GRAPH_INPUT,
                IMAGE_ENCODER,
                ONNX_FILES,
                TEXT_ENCODER,
                VAE_DECODER,
                VAE_ENCODER,
            )
            from wan_triton.repository import version_dir as folder

            text_graph = folder(repository, TEXT_ENCODER) / ONNX_FILES[TEXT_ENCODER]["model"]
            encode = rt.encoder_fn(rt.session(text_graph, device))
            decoder = rt.chunk_runners(folder(repository, VAE_DECODER), VAE_DECODER, device)
            encoder = rt.chunk_runners(folder(repository, VAE_ENCODER), VAE_ENCODER, device)
            decode = lambda latents: chunked_decode(*decoder, latents, vae_config)  # noqa: E731
            encode_video = lambda video: chunked_encode(*encoder, video, vae_config)  # noqa: E731
            if family.image_tokens:
                graph = folder(repository, IMAGE_ENCODER) / ONNX_FILES[IMAGE_ENCODER]["model"]
                encode_image = ImageEncoder(checkpoint.image_processor(), onnx_image_encoder(rt.session(graph, device)))
            if family.s2v:
                graph = folder(repository, AUDIO_ENCODER) / ONNX_FILES[AUDIO_ENCODER]["model"]
                session = rt.session(graph, device)
                onnx_hidden = lambda values: torch.from_numpy(session.run(None, {AUDIO_GRAPH_INPUT: values})[0])  # noqa: E731
                encode_audio = lambda samples: audio.features(samples, AUDIO_RATE, onnx_hidden)  # noqa: E731
        return cls(
            prompt_encoder=PromptEncoder(checkpoint.tokenizer(), encode),
            denoiser=Denoiser.from_checkpoint(checkpoint, dtype, device),
            decode=decode,
            geometry=Geometry.from_checkpoint(checkpoint.root),
            family=family,
            encode_video=encode_video,
            encode_image=encode_image,
            encode_audio=encode_audio,
            device=device,
            mag_ratios=step_cache.load_mag_ratios(checkpoint.root),
        )

    def frames(
        self, request: GenerationRequest, *, callback: StepCallback | None = None, media: Media | None = None
    ) -> np.ndarray:
        """Run every stage but the MP4 encode: frames [F, H, W, 3] float32 in [0, 1]. A request
        with media needs them prepared first (`conditioning.prepare`). `callback` sees the steps
        of every segment or clip as one count."""
        return tasks.generate(LocalStages(self), request, media or Media(), self.family, self.geometry, callback)

    def video(self, request: GenerationRequest, media: Media | None = None) -> bytes:
        media = media or Media()
        return LocalStages(self).encode_mp4(self.frames(request, media=media), request.fps, media.audio)


@dataclass
class LocalStages:
    """tasks.Stages in this process: a `Pipeline`'s stages, called directly."""

    pipeline: Pipeline

    def encode_text(self, prompt: str, negative: str | None) -> tuple[np.ndarray, np.ndarray | None]:
        embeds = self.pipeline.prompt_encoder([prompt] if negative is None else [prompt, negative])
        return embeds[:1], None if negative is None else embeds[1:]

    def encode_image(self, image: np.ndarray) -> np.ndarray:
        if self.pipeline.encode_image is None:
            raise ValueError("this checkpoint has no image encoder")
        return self.pipeline.encode_image(image)

    def encode_video(self, given: VaeInput) -> np.ndarray:
        assert self.pipeline.encode_video is not None
        return encode_input(self.pipeline.encode_video, given)

    def encode_audio(self, samples: np.ndarray) -> np.ndarray:
        if self.pipeline.encode_audio is None:
            raise ValueError("this checkpoint has no audio encoder")
        return self.pipeline.encode_audio(samples)

    def denoise(self, job: DenoiseJob, progress: tasks.Progress | None) -> np.ndarray:
        if job.lora_names:
            raise ValueError("adapters are served (serve --loras), not run in-process")
        pipe = self.pipeline
        return run_job(pipe.denoiser, job, pipe.geometry, pipe.device, pipe.mag_ratios, progress)

    def decode(self, latents: np.ndarray, tail_frames: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        video = self.pipeline.decode(latents)
        return to_frames(video), video[:, :, -tail_frames:] if tail_frames else None

    def encode_mp4(self, frames: np.ndarray, fps: int, audio: np.ndarray | None) -> bytes:
        return encode_mp4(frames, fps, audio, AUDIO_RATE)

    def check(self) -> None:
        """In-process, a stop is the step callback's to raise."""
