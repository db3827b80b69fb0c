"""Wan2.2-S2V's transformer (`Wan-AI/Wan2.2-S2V-14B`): Wan's DiT, driven by speech.

diffusers 0.42 has no S2V model. This one is built from diffusers' Wan parts (blocks, attention, time and
text embedders), so what S2V shares with Wan keeps diffusers' names and arithmetic, and adds S2V's own
modules under the release's names (`casual_audio_encoder`, `audio_injector`, `frame_packer`,
`cond_encoder`, `trainable_cond_mask`). The release's weights load through diffusers' own mapping of
Wan's original names (`from_release_state_dict`).

One call sees, as one token sequence:
- the noisy latents of one clip (patch-embedded, plus the pose condition's embedding), rotary frames from 0;
- the reference image's latent frame, at rotary frame 30;
- the previous clip's last latent frames, packed at three scales (FramePack: the last frame at full
  resolution, the 2 before it at half, the 16 before those at a quarter), at negative rotary frames
  (conjugate frequencies). The first clip has none (`motion=None`).
A learned embedding tells the three kinds apart (`trainable_cond_mask`). The noisy tokens are modulated
by the step's timestep, the others by timestep 0 (they are clean). After each block of
`audio_inject_layers`, each latent frame's video tokens cross-attend to that frame's audio tokens,
after a LayerNorm whose scale and shift come from the frame's global audio embedding.

The release runs guidance as two calls of batch 1 (the unconditional one with the audio zeroed); here the
two can be one batch of two, sharing the step's timestep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REFERENCE_FRAME = 30  # the reference latent's rotary frame: past any clip's 20 latent frames
# The release config's switches for variants it never shipped: only these values are implemented.
RELEASE_SWITCHES = {
    "enable_adain": True,
    "adain_mode": "attn_norm",
    "enable_framepack": True,
    "enable_motioner": False,
    "framepack_drop_mode": "padd",
    "zero_timestep": True,
    "add_last_motion": True,
}


@dataclass(frozen=True)
class S2VConfig:
    """The release's `config.json` fields this model reads; the defaults are Wan2.2-S2V-14B's."""

    dim: int = 5120
    ffn_dim: int = 13824
    freq_dim: int = 256
    num_heads: int = 40
    num_layers: int = 40
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    cond_dim: int = 16
    audio_dim: int = 1024
    num_audio_token: int = 4
    audio_inject_layers: tuple[int, ...] = (0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39)
    eps: float = 1e-6
    patch_size: tuple[int, int, int] = (1, 2, 2)
    zip_frame_buckets: tuple[int, int, int] = (1, 2, 16)  # FramePack: latent frames at full, 1/2 and 1/4 scale
    motion_frames: int = 73  # pixel frames handed from one clip to the next (19 latent frames)
    audio_layers: int = 25  # wav2vec2's hidden states the audio encoder weighs: its embeddings and 24 layers

    @classmethod
    def from_release(cls, config: dict) -> S2VConfig:
        for name, value in RELEASE_SWITCHES.items():
            if name in config and config[name] != value:
                raise ValueError(f"S2V config {name}={config[name]!r} is not supported; only {value!r}")
        names = {field.name for field in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in names})

    @property
    def out_channels(self) -> int:  # the name diffusers' configs give it
        return self.out_dim

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def motion_latent_frames(self) -> int:
        return sum(self.zip_frame_buckets)


def timestep_embedding(dim: int, timesteps: torch.Tensor) -> torch.Tensor:
    """Wan's sinusoidal timestep embedding, [cos, sin], computed in float64 as the release does (float32
    loses ~1e-4 on timesteps near 1000)."""
    half = dim // 2
    angles = torch.outer(timesteps.double(), torch.pow(10000, -torch.arange(half, dtype=torch.float64) / half))
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class _RotaryTable:
    """Complex rotary frequencies per axis (frames, rows, columns) for one head dimension, split as Wan
    splits it, in float64."""

    def __init__(self, head_dim: int, positions: int = 1024, theta: float = 10000.0) -> None:
        axis = head_dim // 3
        self.axes = [self._axis(d, positions, theta) for d in (head_dim - 2 * axis, axis, axis)]

    @staticmethod
    def _axis(dim: int, positions: int, theta: float) -> torch.Tensor:
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2)[: dim // 2].double() / dim)
        angles = torch.outer(torch.arange(positions, dtype=torch.float64), freqs)
        return torch.polar(torch.ones_like(angles), angles)

    def segment(self, frames: list[int], rows: list[int], cols: list[int], before: bool = False) -> torch.Tensor:
        """[len(frames) * len(rows) * len(cols), head_dim / 2] for tokens in (frame, row, column) order;
        `before`: the frames count back from 0 (conjugate frequencies)."""
        f, h, w = self.axes
        f = f[frames].conj() if before else f[frames]
        grid = (len(frames), len(rows), len(cols))
        return torch.cat(
            [
                f[:, None, None].expand(*grid, -1),
                h[rows][None, :, None].expand(*grid, -1),
                w[cols][None, None, :].expand(*grid, -1),
            ],
            dim=-1,
        ).reshape(math.prod(grid), -1)


def _spread(first: int, span: int, count: int) -> list[int]:
    """`count` integer positions spread over `span` positions from `first`, as the release samples them
    (np.linspace, truncated): a coarser grid keeps the positions of the full one it summarises."""
    return np.linspace(first, first + span - 1, count).astype(int).tolist()


def _as_cos_sin(freqs: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Complex [S, D/2] as the (cos, sin) pair diffusers' Wan attention takes, [1, S, 1, D]."""
    cos = freqs.real.repeat_interleave(2, dim=-1)[None, :, None]
    sin = freqs.imag.repeat_interleave(2, dim=-1)[None, :, None]
    return cos.to(dtype), sin.to(dtype)


class _CausalConv1d(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.pad = kernel - 1
        self.conv = nn.Conv1d(channels_in, channels_out, kernel, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (self.pad, 0), mode="replicate"))


class _AudioFrames(nn.Module):
    """Per video frame audio features [B, audio_dim, T] -> per latent frame tokens (two causal stride-2
    convolutions: 4 video frames a latent frame): `tokens` local ones [B, T', tokens + 1, dim] (the last a
    learned padding token) and one global one [B, T', 1, dim]."""

    def __init__(self, audio_dim: int, dim: int, tokens: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.conv1_local = _CausalConv1d(audio_dim, dim // 4 * tokens)
        self.conv1_global = _CausalConv1d(audio_dim, dim // 4)
        self.conv2 = _CausalConv1d(dim // 4, dim // 2, stride=2)
        self.conv3 = _CausalConv1d(dim // 2, dim, stride=2)
        self.final_linear = nn.Linear(dim, dim)
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, 1, dim))

    @staticmethod
    def _norm_act(x: torch.Tensor) -> torch.Tensor:  # [N, C, T] -> [N, T, C]
        x = x.transpose(1, 2)
        return F.silu(F.layer_norm(x, x.shape[-1:], eps=1e-6))

    def _downsample(self, x: torch.Tensor) -> torch.Tensor:  # [N, T, C/4] -> [N, T/4, C]
        x = self._norm_act(self.conv2(x.transpose(1, 2)))
        return self._norm_act(self.conv3(x.transpose(1, 2)))

    def forward(self, channels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`channels` [B, audio_dim, T]."""
        batch = channels.shape[0]
        local = self.conv1_local(channels)  # [B, tokens * C/4, T]
        local = local.unflatten(1, (self.tokens, -1)).flatten(0, 1)  # [B * tokens, C/4, T]
        local = self._downsample(self._norm_act(local))  # [B * tokens, T', C]
        local = local.unflatten(0, (batch, self.tokens)).transpose(1, 2)  # [B, T', tokens, C]
        padding = self.padding_tokens.expand(batch, local.shape[1], 1, -1).to(local.dtype)
        local = torch.cat([local, padding], dim=2)
        whole = self._downsample(self._norm_act(self.conv1_global(channels)))
        return self.final_linear(whole)[:, :, None], local


class _AudioEncoder(nn.Module):
    """wav2vec2's stacked hidden states [B, layers, audio_dim, T] -> the layers averaged with learned
    weights -> `_AudioFrames`."""

    def __init__(self, config: S2VConfig) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.full((1, config.audio_layers, 1, 1), 0.01))
        self.encoder = _AudioFrames(config.audio_dim, config.dim, config.num_audio_token)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = F.silu(self.weights.to(features.dtype))
        mixed = (features * weights / weights.sum(dim=1, keepdim=True)).sum(dim=1)  # [B, audio_dim, T]
        return self.encoder(mixed)


class _AdaptiveNorm(nn.Module):
    """LayerNorm whose shift and scale come from a conditioning vector (the frame's global audio token)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim * 2)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        shift, scale = self.linear(F.silu(condition)).chunk(2, dim=1)
        return F.layer_norm(x, x.shape[-1:], eps=1e-5) * (1 + scale[:, None]) + shift[:, None]


class _AudioInjector(nn.Module):
    def __init__(self, config: S2VConfig) -> None:
        from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor

        super().__init__()
        self.layers = [i for i in config.audio_inject_layers if i < config.num_layers]
        head = config.head_dim
        self.injector = nn.ModuleList(
            WanAttention(
                config.dim,
                config.num_heads,
                head,
                config.eps,
                cross_attention_dim_head=head,
                processor=WanAttnProcessor(),
            )
            for _ in self.layers
        )
        self.injector_adain_layers = nn.ModuleList(_AdaptiveNorm(config.dim) for _ in self.layers)

    def forward(self, block: int, hidden: torch.Tensor, video_tokens: int, audio: tuple) -> torch.Tensor:
        if block not in self.layers:
            return hidden
        index = self.layers.index(block)
        audio_global, audio_local = audio  # [B, T, 1, D], [B, T, tokens + 1, D]
        batch, frames = audio_local.shape[:2]
        video = hidden[:, :video_tokens].unflatten(1, (frames, -1)).flatten(0, 1)  # [B * T, h * w, D]
        normed = self.injector_adain_layers[index](video, audio_global.flatten(0, 1)[:, 0])
        residual = self.injector[index](normed, audio_local.flatten(0, 1)).unflatten(0, (batch, frames)).flatten(1, 2)
        return torch.cat([hidden[:, :video_tokens] + residual, hidden[:, video_tokens:]], dim=1)


class _FramePacker(nn.Module):
    """The previous clip's last latent frames as tokens, the older ones coarser."""

    def __init__(self, config: S2VConfig) -> None:
        super().__init__()
        self.buckets = config.zip_frame_buckets
        self.proj = nn.Conv3d(config.in_dim, config.dim, (1, 2, 2), stride=(1, 2, 2))
        self.proj_2x = nn.Conv3d(config.in_dim, config.dim, (2, 4, 4), stride=(2, 4, 4))
        self.proj_4x = nn.Conv3d(config.in_dim, config.dim, (4, 8, 8), stride=(4, 8, 8))

    def forward(self, motion: torch.Tensor, table: _RotaryTable) -> tuple[torch.Tensor, torch.Tensor]:
        """`motion` [B, C, T, H, W] (any T: the last `sum(buckets)` frames are used, zeros before a short
        one) -> tokens [B, N, D] and their rotary frequencies [N, head_dim / 2]."""
        total = sum(self.buckets)
        padded = motion.new_zeros(*motion.shape[:2], total, *motion.shape[3:])
        kept = min(total, motion.shape[2])
        if kept:
            padded[:, :, -kept:] = motion[:, :, -kept:]
        oldest, older, last = padded.split(self.buckets[::-1], dim=2)
        height, width = motion.shape[3] // 2, motion.shape[4] // 2  # the full-scale token grid
        tokens, freqs, before = [], [], 0
        for frames, latents, proj in zip(
            self.buckets, (last, older, oldest), (self.proj, self.proj_2x, self.proj_4x), strict=True
        ):
            packed = proj(latents)
            t, h, w = packed.shape[2:]
            tokens.append(packed.flatten(2).transpose(1, 2))
            # frames count back from the clip: the bucket's first frame, then spread over it
            start = before + frames
            positions = np.linspace(start, start - frames + 1, t).astype(int).tolist()
            freqs.append(table.segment(positions, _spread(0, height, h), _spread(0, width, w), before=True))
            before = start
        return torch.cat(tokens, dim=1), torch.cat(freqs)


class S2VTransformer(nn.Module):
    def __init__(self, config: S2VConfig) -> None:
        from diffusers.models.normalization import FP32LayerNorm
        from diffusers.models.transformers.transformer_wan import WanTimeTextImageEmbedding, WanTransformerBlock

        super().__init__()
        self.config = config
        c, patch = config, config.patch_size
        self.patch_embedding = nn.Conv3d(c.in_dim, c.dim, patch, stride=patch)
        self.condition_embedder = WanTimeTextImageEmbedding(c.dim, c.freq_dim, c.dim * 6, c.text_dim)
        self.blocks = nn.ModuleList(
            WanTransformerBlock(c.dim, c.ffn_dim, c.num_heads, "rms_norm_across_heads", True, c.eps)
            for _ in range(c.num_layers)
        )
        self.norm_out = FP32LayerNorm(c.dim, c.eps, elementwise_affine=False)
        self.proj_out = nn.Linear(c.dim, c.out_dim * math.prod(patch))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, c.dim) / c.dim**0.5)
        self.cond_encoder = nn.Conv3d(c.cond_dim, c.dim, patch, stride=patch)
        self.casual_audio_encoder = _AudioEncoder(c)  # the release's spelling
        self.audio_injector = _AudioInjector(c)
        self.trainable_cond_mask = nn.Embedding(3, c.dim)  # 0 noisy, 1 reference, 2 motion
        self.frame_packer = _FramePacker(c)
        self.rotary = _RotaryTable(c.head_dim)

    @classmethod
    def from_release_state_dict(cls, config: S2VConfig, state: dict[str, torch.Tensor]) -> S2VTransformer:
        """Weights in the release's names (Wan's original ones), mapped as diffusers maps Wan's."""
        from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(convert_wan_transformer_to_diffusers(dict(state)), strict=True, assign=True)
        model.rotary = _RotaryTable(config.head_dim)  # built on the meta device above
        return model.eval()

    def _audio(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, layers, audio_dim, video frames] -> per latent frame (global, local) tokens. The encoder is
        causal over the motion frames' span too: those frames get the clip's first audio frame."""
        motion = self.config.motion_frames
        lead = features[..., :1].expand(*features.shape[:-1], motion)
        audio_global, audio_local = self.casual_audio_encoder(torch.cat([lead, features], dim=-1))
        skip = (motion + 3) // 4  # the motion frames' latent frames
        return audio_global[:, skip:], audio_local[:, skip:]

    def _modulation(self, timestep: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The time embedding of [timestep, 0] and its per-block modulation [2, 6, dim]. One timestep for the
        batch (the guidance branches share it)."""
        embedder = self.condition_embedder
        steps = torch.cat([timestep.reshape(-1)[:1].float(), timestep.new_zeros(1).float()])
        temb = embedder.time_embedder(timestep_embedding(self.config.freq_dim, steps).to(dtype))
        return temb, embedder.time_proj(embedder.act_fn(temb)).unflatten(1, (6, -1))

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        audio_features: torch.Tensor,
        reference_latents: torch.Tensor,
        motion_latents: torch.Tensor | None = None,
        pose_hidden_states: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> torch.Tensor | tuple[torch.Tensor]:
        """The flow prediction for `hidden_states`, the noisy latents [B, C, F, H, W], at `timestep` (one for
        the batch); `encoder_hidden_states` the text [B, L, text_dim]; `audio_features` wav2vec2's [B, layers,
        audio_dim, 4 F] (zeros: the unconditional branch); `reference_latents` the image's latent frame
        [B, C, 1, H, W]; `motion_latents` the previous clip's [B, C, T, H, W] (None: the first clip);
        `pose_hidden_states` the pose video's latents, like `hidden_states`. The names and `return_dict` are
        diffusers' Wan transformers', so the denoising loop drives this one as it drives them."""
        noisy, text, audio, reference = hidden_states, encoder_hidden_states, audio_features, reference_latents
        motion, pose = motion_latents, pose_hidden_states
        dtype = self.patch_embedding.weight.dtype
        pose = torch.zeros_like(noisy) if pose is None else pose
        video = self.patch_embedding(noisy.to(dtype)) + self.cond_encoder(pose.to(dtype))
        frames, height, width = video.shape[2:]
        video_tokens = frames * height * width
        ref = self.patch_embedding(reference.to(dtype))
        rows, cols = list(range(height)), list(range(width))
        tokens = [video.flatten(2).transpose(1, 2), ref.flatten(2).transpose(1, 2)]
        freqs = [
            self.rotary.segment(list(range(frames)), rows, cols),
            self.rotary.segment([REFERENCE_FRAME], rows, cols),
        ]
        kinds = [0] * video_tokens + [1] * tokens[1].shape[1]
        if motion is not None:
            packed, packed_freqs = self.frame_packer(motion.to(dtype), self.rotary)
            tokens.append(packed)
            freqs.append(packed_freqs)
            kinds += [2] * packed.shape[1]
        hidden = torch.cat(tokens, dim=1)
        hidden = hidden + self.trainable_cond_mask(torch.tensor(kinds, device=hidden.device))[None].to(dtype)
        rotary = _as_cos_sin(torch.cat(freqs).to(hidden.device), torch.float32)
        context = self.condition_embedder.text_embedder(text.to(dtype))
        audio_tokens = self._audio(audio.to(dtype))
        temb, modulation = self._modulation(timestep.to(hidden.device), dtype)
        for index, block in enumerate(self.blocks):
            hidden = _block(block, hidden, context, modulation, video_tokens, rotary)
            hidden = self.audio_injector(index, hidden, video_tokens, audio_tokens)
        shift, scale = (self.scale_shift_table + temb[:1, None]).chunk(2, dim=1)
        out = self.proj_out((self.norm_out(hidden[:, :video_tokens].float()) * (1 + scale) + shift).to(dtype))
        p_t, p_h, p_w = self.config.patch_size
        batch = out.shape[0]
        out = out.reshape(batch, frames, height, width, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        out = out.reshape(batch, -1, frames * p_t, height * p_h, width * p_w)
        return out if return_dict else (out,)


def _block(block, hidden, context, modulation, video_tokens: int, rotary) -> torch.Tensor:
    """diffusers' WanTransformerBlock with two modulations: the noisy tokens' (the step's timestep) and the
    clean ones' (timestep 0), applied to each segment, nothing the size of the sequence materialised."""
    shift, scale, gate, ffn_shift, ffn_scale, ffn_gate = (block.scale_shift_table + modulation.float()).unbind(1)

    def modulated(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        x = x.float()
        head, tail = x[:, :video_tokens], x[:, video_tokens:]
        joined = torch.cat([head * (1 + scale[0]) + shift[0], tail * (1 + scale[1]) + shift[1]], dim=1)
        return joined.type_as(hidden)

    def gated(x: torch.Tensor, residual: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        x, residual = x.float(), residual.float()
        head = x[:, :video_tokens] + residual[:, :video_tokens] * gate[0]
        tail = x[:, video_tokens:] + residual[:, video_tokens:] * gate[1]
        return torch.cat([head, tail], dim=1).type_as(hidden)

    hidden = gated(hidden, block.attn1(modulated(block.norm1(hidden.float()), shift, scale), None, None, rotary), gate)
    hidden = hidden + block.attn2(block.norm2(hidden.float()).type_as(hidden), context, None, None)
    ffn = block.ffn(modulated(block.norm3(hidden.float()), ffn_shift, ffn_scale))
    return gated(hidden, ffn, ffn_gate)
