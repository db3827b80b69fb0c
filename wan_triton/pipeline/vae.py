"""Stage 4: the Wan VAE, decoding latents to frames (and encoding frames to latents).

The Wan VAE is causal in time: diffusers runs its decoder one latent frame at a time (its
encoder one frame, then four at a time) and threads a per-convolution feature cache through
the calls. `CausalChunk` makes that cache explicit tensors in and out, so one exported graph
per part (plus one for the first chunk, which skips the temporal up/down-sampling) decodes any
frame count and any size, chunk by chunk, in bounded memory. `run_chunks` is the loop, the
same for torch modules and ONNX Runtime sessions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import patchify, unpatchify

from wan_triton.stage_io import VaeInput

Part = Literal["decoder", "encoder"]
# (chunk, *cache) -> (output, *new_cache), numpy in and out.
ChunkFn = Callable[..., Sequence[np.ndarray]]


def chunk_slices(part: Part, frames: int) -> list[slice]:
    """Decoder: one latent frame per chunk. Encoder: the first frame, then four at a time."""
    if part == "decoder":
        return [slice(i, i + 1) for i in range(frames)]
    return [slice(0, 1)] + [slice(1 + 4 * i, 5 + 4 * i) for i in range((frames - 1) // 4)]


class CausalChunk(torch.nn.Module):
    """One chunk of the Wan VAE decoder or encoder with its feature cache as plain tensors.

    Cache entries are padded in front with zeros to their steady-state frame count: a causal
    convolution pads with zeros anyway, so the padded cache computes exactly what diffusers'
    shorter (or absent, or "Rep") cache does, and every chunk after the first has one signature.
    """

    def __init__(self, vae, part: Part, first: bool, cache_frames: Sequence[int]) -> None:
        super().__init__()
        self.vae, self.part, self.first = vae, part, first
        self.cache_frames = list(cache_frames)

    def forward(self, x: torch.Tensor, *cache: torch.Tensor) -> tuple[torch.Tensor, ...]:
        vae, patch = self.vae, self.vae.config.patch_size
        feat: list = [None] * len(self.cache_frames) if self.first else list(cache)
        if self.part == "decoder":
            out = vae.decoder(vae.post_quant_conv(x), feat_cache=feat, feat_idx=[0], first_chunk=self.first)
            if patch is not None:
                out = unpatchify(out, patch_size=patch)
            out = out.clamp(-1.0, 1.0)
        else:
            if patch is not None:
                x = patchify(x, patch_size=patch)
            out = vae.quant_conv(vae.encoder(x, feat_cache=feat, feat_idx=[0]))
        return (out, *self._steady(feat))

    def _steady(self, feat: list) -> list[torch.Tensor]:
        steady: list[torch.Tensor] = []
        for entry, frames in zip(feat, self.cache_frames, strict=True):
            if isinstance(entry, str):  # "Rep": an upsampler that has seen no frame yet
                entry = torch.zeros_like(steady[-1][:, :, :1])
            if entry.shape[2] < frames:
                pad = entry.new_zeros(*entry.shape[:2], frames - entry.shape[2], *entry.shape[3:])
                entry = torch.cat([pad, entry], dim=2)
            steady.append(entry)
        return steady


@torch.inference_mode()
def cache_frames(vae, part: Part, sample: torch.Tensor) -> list[int]:
    """Steady-state frame count of each cache entry, read off two eager chunks of `sample`."""
    module = vae.decoder if part == "decoder" else vae.encoder
    x = vae.post_quant_conv(sample) if part == "decoder" else sample
    if part == "encoder" and vae.config.patch_size is not None:
        x = patchify(x, patch_size=vae.config.patch_size)
    feat: list = [None] * sum(1 for _ in module.modules())  # at most one entry per module
    first, second = chunk_slices(part, x.shape[2])[:2]
    module(x[:, :, first], feat_cache=feat, feat_idx=[0], **({"first_chunk": True} if part == "decoder" else {}))
    used = [0]
    module(x[:, :, second], feat_cache=feat, feat_idx=used)
    return [entry.shape[2] for entry in feat[: used[0]]]


def torch_chunks(vae, part: Part, sample: torch.Tensor) -> tuple[CausalChunk, CausalChunk]:
    """The (first, steady) chunk modules of a part, ready to run or export."""
    frames = cache_frames(vae, part, sample)
    return CausalChunk(vae, part, True, frames).eval(), CausalChunk(vae, part, False, frames).eval()


def run_chunks(part: Part, first: ChunkFn, step: ChunkFn, x: np.ndarray) -> np.ndarray:
    """Run a part over all frames of `x` [B, C, F, H, W], chunk by chunk, threading the cache."""
    outputs, cache = [], ()
    for index, frames in enumerate(chunk_slices(part, x.shape[2])):
        chunk = np.ascontiguousarray(x[:, :, frames])
        out, *cache = first(chunk) if index == 0 else step(chunk, *cache)
        outputs.append(np.asarray(out))
    return np.concatenate(outputs, axis=2)


def denormalize(latents: np.ndarray, config) -> np.ndarray:
    """Undo the latent normalisation of float32 latents, with diffusers' exact arithmetic."""
    shape = (1, config["z_dim"], 1, 1, 1)
    mean = np.asarray(config["latents_mean"], dtype=np.float32).reshape(shape)
    inverse_std = (np.float32(1.0) / np.asarray(config["latents_std"], dtype=np.float32)).reshape(shape)
    return (latents / inverse_std + mean).astype(np.float32)


def normalize(latents: np.ndarray, config) -> np.ndarray:
    """The latent normalisation of float32 latents, with diffusers' exact arithmetic."""
    shape = (1, config["z_dim"], 1, 1, 1)
    mean = np.asarray(config["latents_mean"], dtype=np.float32).reshape(shape)
    inverse_std = (np.float32(1.0) / np.asarray(config["latents_std"], dtype=np.float32)).reshape(shape)
    return ((latents - mean) * inverse_std).astype(np.float32)


def to_video(frames: np.ndarray, num_frames: int | None = None) -> np.ndarray:
    """uint8 frames [F, H, W, 3] -> video [1, 3, F', H, W] in [-1, 1] (diffusers' preprocess),
    with blank (0.0, mid-grey) frames after the first up to `num_frames`: Wan I2V's condition clip,
    the image then blanks, or with a second frame given (Wan2.1 FLF2V), the first, blanks, the last."""
    video = (frames.astype(np.float32) / np.float32(255.0)) * np.float32(2.0) - np.float32(1.0)
    video = video.transpose(3, 0, 1, 2)[None]
    if num_frames is not None and num_frames > video.shape[2]:
        blank = np.zeros((*video.shape[:2], num_frames - video.shape[2], *video.shape[3:]), np.float32)
        video = np.concatenate([video[:, :, :1], blank, video[:, :, 1:]], axis=2)
    return np.ascontiguousarray(video)


@torch.inference_mode()
def letterbox(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 image [h, w, 3] -> one frame [1, 3, 1, height, width] in [-1, 1]: scaled (bilinear) to
    fit, centred on white, as diffusers' WanVACEPipeline prepares a reference image."""
    picture = torch.from_numpy(to_video(image[None])[:, :, 0])
    scale = min(height / picture.shape[2], width / picture.shape[3])
    size = int(picture.shape[2] * scale), int(picture.shape[3] * scale)
    fitted = torch.nn.functional.interpolate(picture, size=size, mode="bilinear", align_corners=False)[0]
    canvas = torch.ones(3, height, width)
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    canvas[:, top : top + size[0], left : left + size[1]] = fitted
    return canvas[None, :, None].numpy()


@torch.inference_mode()
def torch_encode(vae, video: np.ndarray) -> np.ndarray:
    """Video [B, 3, F, H, W] in [-1, 1] -> normalised latents, the posterior's mode (diffusers' "argmax")."""
    x = torch.from_numpy(video).to(vae.device, vae.dtype)
    return normalize(vae.encode(x).latent_dist.mode().float().cpu().numpy(), vae.config)


def chunked_encode(first: ChunkFn, step: ChunkFn, video: np.ndarray, config) -> np.ndarray:
    """Video [B, 3, F, H, W] in [-1, 1] -> normalised latents, through exported chunk graphs."""
    moments = run_chunks("encoder", first, step, video)
    return normalize(moments[:, : config["z_dim"]], config)


@torch.inference_mode()
def torch_decode(vae, latents: np.ndarray) -> np.ndarray:
    """Normalised latents -> video [B, 3, F, H, W] in [-1, 1], with diffusers' own decoder."""
    z = torch.from_numpy(denormalize(latents, vae.config)).to(vae.device, vae.dtype)
    return vae.decode(z, return_dict=False)[0].float().cpu().numpy()


def chunked_decode(first: ChunkFn, step: ChunkFn, latents: np.ndarray, config) -> np.ndarray:
    """Normalised latents -> video [B, 3, F, H, W] in [-1, 1], through exported chunk graphs."""
    return run_chunks("decoder", first, step, denormalize(latents, config))


def to_frames(video: np.ndarray) -> np.ndarray:
    """Video [1, 3, F, H, W] in [-1, 1] -> frames [F, H, W, 3] in [0, 1] (diffusers' postprocess)."""
    return np.clip(video[0] * 0.5 + 0.5, 0.0, 1.0).transpose(1, 2, 3, 0)


def clip_of(given: VaeInput) -> np.ndarray:
    """The clip a VAE input stands for, [1, 3, F, H, W] in [-1, 1] (stage_io.VaeInput)."""
    if given.head is not None and given.frames is None and given.canvas is None:
        return given.head  # alone: S2V's motion frames
    if given.frames is None:  # a blank clip (VACE without a video, Animate without a background)
        if given.canvas is None or given.clip_frames is None:
            raise ValueError("a blank clip needs its canvas and its frame count")
        rest = np.zeros((1, 3, given.clip_frames, *given.canvas), np.float32)
    elif given.canvas is not None:
        rest = letterbox(given.frames[0], *given.canvas)
    else:
        rest = to_video(given.frames, given.clip_frames)
    return rest if given.head is None else np.concatenate([given.head, rest], axis=2)


def encode_input(encode: Callable[[np.ndarray], np.ndarray], given: VaeInput) -> np.ndarray:
    """A VAE input's latents through `encode` (video -> normalised latents); with a VACE mask, the
    kept and the generated clip encoded apart and joined on the channels."""
    from wan_triton import vace

    video = clip_of(given)
    if given.mask is None:
        return encode(video)
    kept, generated = vace.masked_clips(video, given.mask)
    return np.concatenate([encode(kept), encode(generated)], axis=1)
