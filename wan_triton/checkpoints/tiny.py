"""Random Wan checkpoints in the exact diffusers on-disk format, built offline.

They stand in for the user's real folders (e.g. `Wan-AI/Wan2.1-T2V-1.3B-Diffusers`): the same
files, configs and classes, loaded by the same code, only smaller. Random weights carry real
FLOPs, so the `bench` size gives honest timings even though its videos are noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Sizes per component. `tiny` keeps tests fast; `bench` makes the denoiser dominate run time;
# `1.3b` has the real model's shapes.
SIZES: dict[str, dict[str, dict]] = {
    "tiny": {
        "text_encoder": dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4),
        "transformer": dict(num_attention_heads=2, attention_head_dim=12, ffn_dim=32, num_layers=2),
        "vae": dict(base_dim=3, dim_mult=[1, 1, 1, 1], num_res_blocks=1),
    },
    "bench": {
        "text_encoder": dict(d_model=256, d_kv=32, d_ff=512, num_layers=4, num_heads=8),
        "transformer": dict(num_attention_heads=8, attention_head_dim=64, ffn_dim=2048, num_layers=8),
        "vae": dict(base_dim=32, dim_mult=[1, 2, 2, 2], num_res_blocks=1),
    },
    # Wan2.1-T2V-1.3B's transformer and VAE (benchmarks/gpu_check.py); a one-layer text encoder
    # of the real width (UMT5-XXL's 4096) stands in for the 5.7B-parameter one.
    "1.3b": {
        "text_encoder": dict(d_model=4096, d_kv=64, d_ff=512, num_layers=1, num_heads=4),
        "transformer": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30),
        "vae": dict(base_dim=96, dim_mult=[1, 2, 4, 4], num_res_blocks=2),
    },
}

# A fixed, small vocabulary: the tokenizer is built from it, never downloaded or trained on
# random data, so the same seed always writes the same tokenizer.json.
_SPECIALS = ["<pad>", "</s>", "<unk>"]
_WORDS = [
    "a",
    "an",
    "the",
    "of",
    "in",
    "on",
    "at",
    "with",
    "and",
    "to",
    "from",
    "by",
    "for",
    "is",
    "are",
    "over",
    "under",
    "near",
    "into",
    "cat",
    "dog",
    "bird",
    "fish",
    "horse",
    "man",
    "woman",
    "child",
    "people",
    "car",
    "boat",
    "train",
    "city",
    "street",
    "forest",
    "river",
    "sea",
    "sky",
    "sun",
    "moon",
    "night",
    "day",
    "rain",
    "snow",
    "red",
    "blue",
    "green",
    "yellow",
    "white",
    "black",
    "golden",
    "bright",
    "dark",
    "slow",
    "fast",
    "walking",
    "running",
    "flying",
    "swimming",
    "dancing",
    "playing",
    "video",
    "camera",
    "shot",
    "close",
    "wide",
    "view",
    "scene",
    "light",
]
_CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;()\"")


@dataclass(frozen=True)
class Variant:
    """A checkpoint layout users have on disk; `build` writes it."""

    reference: str  # the real repository whose format it copies
    build: Callable[[Path, str, int], None]


def _tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = _SPECIALS + ["▁"] + [f"▁{w}" for w in _WORDS] + _CHARS
    pieces = list(dict.fromkeys(pieces))[:vocab_size]
    vocab = [(p, 0.0) for p in _SPECIALS] + [(p, -1.0 - 0.01 * i) for i, p in enumerate(pieces[3:])]
    backend = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=512,
    )


def _build_t2v_21(out: Path, size: str, seed: int) -> None:
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    dims = SIZES[size]
    vocab_size = 256
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=vocab_size, relative_attention_num_buckets=8, **dims["text_encoder"])
    ).eval()
    torch.manual_seed(seed + 1)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        in_channels=16,
        out_channels=16,
        text_dim=dims["text_encoder"]["d_model"],
        freq_dim=256,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=1024,
        **dims["transformer"],
    )
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLWan(z_dim=16, attn_scales=[], temperal_downsample=[False, True, True], **dims["vae"])
    # Wan2.1's published scheduler config (UniPC on flow sigmas, shift 3).
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=3.0,
        num_train_timesteps=1000,
    )
    pipe = WanPipeline(
        tokenizer=_tokenizer(vocab_size),
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
    )
    pipe.save_pretrained(out, safe_serialization=True)


VARIANTS: dict[str, Variant] = {
    "t2v-2.1": Variant("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", _build_t2v_21),
}


def build_checkpoint(out: str | Path, variant: str = "t2v-2.1", size: str = "tiny", seed: int = 0) -> Path:
    """Write a random checkpoint of `variant` to `out`; the same arguments give identical bytes."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    VARIANTS[variant].build(path, size, seed)
    return path
