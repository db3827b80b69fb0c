"""The Wan pipeline as stages, composed in-process.

text.PromptEncoder (+ image.ImageEncoder, vae encode for I2V and V2V) -> latents.initial_latents
-> denoise.Denoiser -> vae (decode) -> video.encode_mp4. Each stage has explicit inputs and
outputs; the Triton models run them one per model, and `Pipeline` runs them in one process
(tests, benchmarks, parity with diffusers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wan_triton import animate, vace
from wan_triton.conditioning import AUDIO_RATE, Media, image_clip_frames
from wan_triton.contract import Family, GenerationRequest, Geometry
from wan_triton.pipeline import step_cache
from wan_triton.pipeline.checkpoint import Checkpoint
from wan_triton.pipeline.denoise import Denoiser, Guide, StepCallback
from wan_triton.pipeline.image import ImageEncoder, onnx_image_encoder, torch_image_encoder
from wan_triton.pipeline.latents import initial_latents, latent_shape
from wan_triton.pipeline.text import PromptEncoder, torch_encoder
from wan_triton.pipeline.vae import (
    chunked_decode,
    chunked_encode,
    letterbox,
    to_frames,
    to_video,
    torch_decode,
    torch_encode,
)
from wan_triton.video import encode_mp4

# Normalised latents [1, C, F, h, w] -> video [1, 3, F', H, W] in [-1, 1], and back.
DecodeFn = Callable[[np.ndarray], np.ndarray]
EncodeVideoFn = Callable[[np.ndarray], np.ndarray]
# uint8 image [H, W, 3] -> CLIP image tokens [1, T, D] (Wan2.1 I2V).
EncodeImageFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Pipeline:
    prompt_encoder: PromptEncoder
    denoiser: Denoiser
    decode: DecodeFn
    geometry: Geometry
    family: Family
    encode_video: EncodeVideoFn | None = None
    encode_image: EncodeImageFn | None = None
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
        encoders and the VAE (what the Triton models run)."""
        checkpoint = Checkpoint.open(path)
        family = Family.from_checkpoint(checkpoint.root)
        vae_config = checkpoint.config("vae")
        encode_image: EncodeImageFn | None = None
        if repository is None:
            vae = checkpoint.vae(dtype, device)
            encode = torch_encoder(checkpoint.text_encoder(dtype, device))
            decode: DecodeFn = lambda latents: torch_decode(vae, latents)  # noqa: E731
            encode_video: EncodeVideoFn = lambda video: torch_encode(vae, video)  # noqa: E731
            if family.image_tokens:
                tower = torch_image_encoder(checkpoint.image_encoder(dtype, device))
                encode_image = ImageEncoder(checkpoint.image_processor(), tower)
        else:
            from wan_triton import onnx_runtime as rt
            from wan_triton.repository import IMAGE_ENCODER, ONNX_FILES, TEXT_ENCODER, VAE_DECODER, VAE_ENCODER
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
        return cls(
            prompt_encoder=PromptEncoder(checkpoint.tokenizer(), encode),
            denoiser=Denoiser.from_checkpoint(checkpoint, dtype, device),
            decode=decode,
            geometry=Geometry.from_checkpoint(checkpoint.root),
            family=family,
            encode_video=encode_video,
            encode_image=encode_image,
            device=device,
            mag_ratios=step_cache.load_mag_ratios(checkpoint.root),
        )

    def guide(self, request: GenerationRequest, media: Media) -> Guide:
        """The conditioning tensors of a prepared request (conditioning.prepare)."""
        assert self.encode_video is not None
        if self.family.vace:
            return self._vace_guide(request, media)
        if self.family.concat_condition and media.image is None:  # else the transformer fails on its channels
            raise ValueError("this checkpoint is image to video: pass the prepared image (media=Media(image=...))")
        if media.image is not None:
            clip = to_video(np.stack(media.images), image_clip_frames(self.family, request.num_frames))
            embeds = None
            if self.encode_image is not None:  # FLF2V: the first frame's tokens, then the last's
                embeds = np.concatenate([self.encode_image(image) for image in media.images], axis=1)
            return Guide(
                image_latents=torch.from_numpy(self.encode_video(clip)),
                image_embeds=None if embeds is None else torch.from_numpy(embeds),
                last_frame=media.last_image is not None,
            )
        if media.video is not None:
            latents = self.encode_video(to_video(media.video))
            return Guide(video_latents=torch.from_numpy(latents), strength=request.strength)
        return Guide()

    def _vace_guide(self, request: GenerationRequest, media: Media) -> Guide:
        """VACE: the clip kept and the clip generated, encoded apart, the references, the folded mask."""
        assert self.encode_video is not None
        shape = (request.num_frames, request.height, request.width)
        clip = to_video(media.video) if media.video is not None else np.zeros((1, 3, *shape), np.float32)
        kept, generated = vace.masked_clips(clip, media.mask)
        latents = np.concatenate([self.encode_video(kept), self.encode_video(generated)], axis=1)
        references = [
            self.encode_video(letterbox(image, request.height, request.width)) for image in media.reference_images
        ]
        folded = vace.fold_mask(media.mask, shape, self.geometry, len(references))
        return Guide(
            control_latents=torch.from_numpy(vace.control_latents(latents, references, folded)),
            conditioning_scale=request.conditioning_scale,
            reference_frames=len(references),
        )

    def frames(
        self, request: GenerationRequest, *, callback: StepCallback | None = None, media: Media | None = None
    ) -> np.ndarray:
        """Run every stage but the MP4 encode: frames [F, H, W, 3] float32 in [0, 1]. A request
        with media needs them prepared first (`conditioning.prepare`)."""
        cfg = request.do_classifier_free_guidance
        prompts = [request.prompt, request.negative_prompt] if cfg else [request.prompt]
        embeds = torch.from_numpy(self.prompt_encoder(prompts))
        media = media or Media()
        if self.family.animate:
            return to_frames(self._animate(request, media, embeds, callback))
        frames = request.num_frames + len(media.reference_images) * self.geometry.vae_temporal  # VACE: + references
        shape = latent_shape(request.height, request.width, frames, self.denoiser.latent_channels, self.geometry)
        latents = self._denoise(
            request, embeds, initial_latents(request.seed, shape, self.device), callback, self.guide(request, media)
        )
        return to_frames(self.decode(latents.float().cpu().numpy()))

    def _denoise(self, request: GenerationRequest, embeds, noise, callback, guide: Guide) -> torch.Tensor:
        return self.denoiser(
            noise,
            embeds[:1],
            embeds[1:] if request.do_classifier_free_guidance else None,
            request.num_inference_steps,
            request.guidance_scale,
            request.guidance_scale_2,
            request.flow_shift,
            callback,
            step_cache.of_request(
                request.cache_method, request.cache_threshold, request.cache_interval, self.mag_ratios
            ),
            guide,
        )

    def _animate(self, request: GenerationRequest, media: Media, embeds: torch.Tensor, callback) -> np.ndarray:
        """Wan2.2 Animate, segment by segment as diffusers runs it: each segment's noise drawn in turn
        from the seed's generator, its condition from the frames the segment before ended with."""
        assert self.encode_video is not None and self.encode_image is not None and media.pose_video is not None
        length, overlap = request.segment_frame_length, request.prev_segment_conditioning_frames
        count = animate.padded_frames(request.num_frames, length, overlap)
        driving = {
            name: to_video(animate.pad_back_and_forth(getattr(media, name), count))
            for name in ("pose_video", "face_video", "background_video")
            if getattr(media, name) is not None
        }
        grey = None if media.mask_video is None else animate.pad_back_and_forth(media.mask_video, count)
        temporal, spatial = self.geometry.vae_temporal, self.geometry.vae_spatial
        height, width = request.height // spatial, request.width // spatial
        latent_frames = (length - 1) // temporal + 1
        character = self.encode_video(to_video(media.image[None]))
        character = np.concatenate([animate.condition_mask(1, height, width, 1, temporal), character], axis=1)
        image_embeds = torch.from_numpy(self.encode_image(media.image))
        shape = (1, self.denoiser.latent_channels, latent_frames + 1, height, width)
        outputs, previous = [], None
        for segment in range(animate.segments(request.num_frames, length, overlap)):
            window = slice(segment * (length - overlap), segment * (length - overlap) + length)
            noise = initial_latents(request.seed, shape, self.device, draw=segment)
            background = driving["background_video"][:, :, window] if "background_video" in driving else None
            # The segment's clip: the frames handed over (the first segment: its own first ones), then
            # the background (replace) or blank frames.
            source = background if background is not None else np.zeros_like(driving["pose_video"][:, :, window])
            given = source[:, :, :overlap] if previous is None else previous[:, :, -overlap:]
            clip_video = np.concatenate([given, source[:, :, overlap:]], axis=2)
            kept = None if grey is None else animate.kept_pixels(grey[window], spatial)
            mask = animate.condition_mask(latent_frames, height, width, overlap if segment else 0, temporal, kept)
            clip = np.concatenate([mask, self.encode_video(clip_video)], axis=1)
            guide = Guide(
                image_embeds=image_embeds,
                condition_latents=torch.from_numpy(np.concatenate([character, clip], axis=2)),
                pose_latents=torch.from_numpy(self.encode_video(driving["pose_video"][:, :, window])),
                face_pixels=torch.from_numpy(driving["face_video"][:, :, window]),
            )
            latents = self._denoise(request, embeds, noise, callback, guide)
            previous = self.decode(latents[:, :, 1:].float().cpu().numpy())
            outputs.append(previous if segment == 0 else previous[:, :, overlap:])
        return np.concatenate(outputs, axis=2)[:, :, : request.num_frames]

    def video(self, request: GenerationRequest, media: Media | None = None) -> bytes:
        media = media or Media()
        return encode_mp4(self.frames(request, media=media), request.fps, media.audio, AUDIO_RATE)
