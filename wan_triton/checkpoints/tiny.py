"""Random Wan checkpoints in the exact diffusers on-disk format, built offline.

They stand in for the user's real folders (e.g. `Wan-AI/Wan2.1-T2V-1.3B-Diffusers`): the same
files, configs and classes, loaded by the same code, only smaller. Random weights carry real
FLOPs, so the `bench` size gives honest timings even though its videos are noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from wan_triton.checkpoints.shapes import VAE_22_LAYOUT

# Sizes per component. `tiny` keeps tests fast; `bench` makes the denoiser dominate run time;
# `1.3b` has the real model's shapes. `vae22` is the Wan2.2 VAE (TI2V), `image_encoder` the CLIP
# vision tower of Wan2.1 I2V; each variant takes the parts it has.
SIZES: dict[str, dict[str, dict]] = {
    "tiny": {
        "text_encoder": dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4),
        "transformer": dict(num_attention_heads=2, attention_head_dim=12, ffn_dim=32, num_layers=2),
        "vae": dict(base_dim=3, dim_mult=[1, 1, 1, 1], num_res_blocks=1),
        "vae22": dict(base_dim=4, decoder_base_dim=6, dim_mult=[1, 2, 4, 4], num_res_blocks=1),
        "image_encoder": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2),
    },
    "bench": {
        "text_encoder": dict(d_model=256, d_kv=32, d_ff=512, num_layers=4, num_heads=8),
        "transformer": dict(num_attention_heads=8, attention_head_dim=64, ffn_dim=2048, num_layers=8),
        "vae": dict(base_dim=32, dim_mult=[1, 2, 2, 2], num_res_blocks=1),
        "vae22": dict(base_dim=32, decoder_base_dim=48, dim_mult=[1, 2, 2, 2], num_res_blocks=1),
        "image_encoder": dict(hidden_size=256, intermediate_size=1024, num_attention_heads=8, num_hidden_layers=4),
    },
    # Wan2.1-T2V-1.3B's transformer and VAE (benchmarks/gpu_check.py) and Wan2.2-TI2V-5B's VAE;
    # a one-layer text encoder of the real width (UMT5-XXL's 4096) stands in for the
    # 5.7B-parameter one, and a two-layer one of CLIP ViT-H/14's width for the 32-layer vision tower.
    "1.3b": {
        "text_encoder": dict(d_model=4096, d_kv=64, d_ff=512, num_layers=1, num_heads=4),
        "transformer": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30),
        "vae": dict(base_dim=96, dim_mult=[1, 2, 4, 4], num_res_blocks=2),
        "vae22": dict(base_dim=160, decoder_base_dim=256, dim_mult=[1, 2, 4, 4], num_res_blocks=2),
        "image_encoder": dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=2),
    },
}
# UMT5-XXL's depth (24 layers) and residual width (4096) with narrow attention and feed-forward (8 heads,
# d_ff 512): 0.35B parameters, so the exported graph's parity at real depth can be measured on a CPU
# (benchmarks/deep_text_encoder.py; the 5.7B-parameter original needs ~23 GB in fp32). The rest is tiny.
SIZES["depth"] = {
    **SIZES["tiny"],
    "text_encoder": dict(d_model=4096, d_kv=64, d_ff=512, num_layers=24, num_heads=8),
}

VOCAB_SIZE = 256
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


def _tokenizer(vocab_size: int, words: Sequence[str] = ()):
    """`words`: whole-word pieces beyond the fixed vocabulary (the trained checkpoint's captions)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = _SPECIALS + ["▁"] + [f"▁{w}" for w in [*_WORDS, *words]] + _CHARS
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


def _seed(seed: int) -> None:
    """Seed torch before each part, so a part's weights do not depend on the parts built before it."""
    import torch

    torch.manual_seed(seed)


def _text_encoder(dims: dict, seed: int):
    from transformers import UMT5Config, UMT5EncoderModel

    _seed(seed)
    config = UMT5Config(vocab_size=VOCAB_SIZE, relative_attention_num_buckets=8, **dims["text_encoder"])
    return UMT5EncoderModel(config).eval()


def _transformer(dims: dict, seed: int, vace: bool = False, **channels):
    from diffusers import WanTransformer3DModel, WanVACETransformer3DModel

    _seed(seed)
    kind = WanTransformer3DModel
    if vace:  # VACE blocks beside every other block from the first (Wan2.1-VACE-1.3B: 0, 2, ..., 28)
        kind = WanVACETransformer3DModel
        channels = {**channels, "vace_layers": list(range(0, dims["transformer"]["num_layers"], 2))}
        channels["vace_in_channels"] = 96  # kept and generated latents (16 + 16), the 8 x 8 mask (64)
    return kind(
        patch_size=(1, 2, 2),
        text_dim=dims["text_encoder"]["d_model"],
        freq_dim=256,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=1024,
        **channels,
        **dims["transformer"],
    )


def _vae21(dims: dict, seed: int):
    from diffusers import AutoencoderKLWan

    _seed(seed)
    return AutoencoderKLWan(z_dim=16, attn_scales=[], temperal_downsample=[False, True, True], **dims["vae"])


def _image_encoder(dims: dict, seed: int):
    """The published tower is OpenCLIP ViT-H/14 (laion2B) in transformers' CLIP classes; only its
    widths and depth shrink here: the 224 px input and 14 px patches fix the 257 image tokens."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    _seed(seed)
    config = CLIPVisionConfig(
        image_size=224,
        patch_size=14,
        projection_dim=1024,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        **dims["image_encoder"],
    )
    return CLIPVisionModel(config).eval()


def _image_processor():
    """CLIP's preprocessing: shortest edge to 224 (bicubic), 224 center crop, OpenAI CLIP mean/std."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        resample=3,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )


def _scheduler(flow_shift: float):
    from diffusers import UniPCMultistepScheduler

    from wan_triton.pipeline.checkpoint import UNIPC_FLOW

    return UniPCMultistepScheduler(flow_shift=flow_shift, **UNIPC_FLOW)


def _build_t2v_21(out: Path, size: str, seed: int) -> None:
    from diffusers import WanPipeline

    dims = SIZES[size]
    pipe = WanPipeline(
        tokenizer=_tokenizer(VOCAB_SIZE),
        text_encoder=_text_encoder(dims, seed),
        transformer=_transformer(dims, seed + 1, in_channels=16, out_channels=16),
        vae=_vae21(dims, seed + 2),
        scheduler=_scheduler(3.0),
    )
    pipe.save_pretrained(out, safe_serialization=True)


def _build_i2v_21(out: Path, size: str, seed: int, last_frame: bool = False) -> None:
    """Wan2.1 I2V 480P: the T2V parts plus a CLIP vision tower whose penultimate hidden states
    the transformer attends to (image_dim, added_kv_proj_dim), and 16 noise + 4 mask + 16
    condition-latent input channels (36), as convert_wan_to_diffusers.py's "Wan-I2V-14B-480p".
    `last_frame`: Wan2.1 FLF2V 720P ("Wan-FLF2V-14B-720P"), whose image embedder adds a positional
    embedding over the first frame's and the last frame's 257 tokens (pos_embed_seq_len 514)."""
    from diffusers import WanImageToVideoPipeline

    dims = SIZES[size]
    vision = dims["image_encoder"]
    transformer = _transformer(
        dims,
        seed + 1,
        in_channels=36,
        out_channels=16,
        image_dim=vision["hidden_size"],
        added_kv_proj_dim=dims["transformer"]["num_attention_heads"] * dims["transformer"]["attention_head_dim"],
        **({"pos_embed_seq_len": 2 * 257} if last_frame else {}),
    )
    if last_frame:  # diffusers starts it at zero; random, so which frame is first matters here too
        transformer.condition_embedder.image_embedder.pos_embed.data.normal_(std=0.5)
    pipe = WanImageToVideoPipeline(
        tokenizer=_tokenizer(VOCAB_SIZE),
        text_encoder=_text_encoder(dims, seed),
        image_encoder=_image_encoder(dims, seed + 3),
        image_processor=_image_processor(),
        transformer=transformer,
        vae=_vae21(dims, seed + 2),
        scheduler=_scheduler(16.0 if last_frame else 3.0),  # I2V: 3 for 480P (5 for 720P); FLF2V 16
    )
    # Without torchvision, transformers 5 instantiates CLIPImageProcessorPil and diffusers would
    # record that name; the published index (and loading code anywhere) names CLIPImageProcessor.
    pipe.register_to_config(image_processor=("transformers", "CLIPImageProcessor"))
    pipe.save_pretrained(out, safe_serialization=True)


def _build_ti2v_22(out: Path, size: str, seed: int) -> None:
    """Wan2.2 TI2V 5B: one transformer on the Wan2.2 VAE's 48 latent channels, timesteps per
    token (`expand_timesteps`), as convert_wan_to_diffusers.py's "Wan2.2-TI2V-5B"."""
    from diffusers import AutoencoderKLWan, WanPipeline

    dims = SIZES[size]
    _seed(seed + 2)
    vae = AutoencoderKLWan(attn_scales=[], **VAE_22_LAYOUT, **dims["vae22"])
    pipe = WanPipeline(
        tokenizer=_tokenizer(VOCAB_SIZE),
        text_encoder=_text_encoder(dims, seed),
        transformer=_transformer(dims, seed + 1, in_channels=48, out_channels=48),
        vae=vae,
        scheduler=_scheduler(5.0),
        expand_timesteps=True,
    )
    pipe.save_pretrained(out, safe_serialization=True)


def _build_a14b(out: Path, size: str, seed: int, image: bool) -> None:
    """Wan2.2 A14B: two transformers of one shape, `transformer` for the high-noise steps and
    `transformer_2` below `boundary_ratio` x 1000 (convert_wan_to_diffusers.py's "Wan2.2-T2V-A14B"
    and "Wan2.2-I2V-A14B"); I2V takes mask + image latents as input channels (36) and no CLIP tower."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    dims = SIZES[size]
    channels = dict(in_channels=36 if image else 16, out_channels=16)
    parts = dict(
        tokenizer=_tokenizer(VOCAB_SIZE),
        text_encoder=_text_encoder(dims, seed),
        transformer=_transformer(dims, seed + 1, **channels),
        transformer_2=_transformer(dims, seed + 4, **channels),
        vae=_vae21(dims, seed + 2),
        scheduler=_scheduler(5.0 if image else 12.0),  # the published flow shifts (720P)
    )
    if image:
        pipe = WanImageToVideoPipeline(**parts, image_encoder=None, image_processor=None, boundary_ratio=0.9)
    else:
        pipe = WanPipeline(**parts, boundary_ratio=0.875)
    pipe.save_pretrained(out, safe_serialization=True)


def _build_vace_21(out: Path, size: str, seed: int) -> None:
    """Wan2.1 VACE: the T2V parts with a VACE transformer, whose control blocks take the video,
    mask and reference latents (convert_wan_to_diffusers.py's "Wan-VACE-1.3B")."""
    from diffusers import WanVACEPipeline

    dims = SIZES[size]
    pipe = WanVACEPipeline(
        tokenizer=_tokenizer(VOCAB_SIZE),
        text_encoder=_text_encoder(dims, seed),
        transformer=_transformer(dims, seed + 1, vace=True, in_channels=16, out_channels=16),
        vae=_vae21(dims, seed + 2),
        scheduler=_scheduler(3.0),
    )
    pipe.save_pretrained(out, safe_serialization=True)


# Wan2.2-Animate's motion encoder at 16 x 16 face pixels instead of 512 (channels per resolution
# as WAN_ANIMATE_MOTION_ENCODER_CHANNEL_SIZES names them), and its face encoder, small.
ANIMATE_FACE = {
    "tiny": dict(
        motion_encoder_size=16,
        motion_encoder_channel_sizes={"16": 8, "8": 8, "4": 8},
        motion_style_dim=16,
        motion_dim=4,
        motion_encoder_dim=16,
        face_encoder_hidden_dim=16,
        face_encoder_num_heads=2,
        inject_face_latents_blocks=1,
    ),
}


def _build_animate_22(out: Path, size: str, seed: int) -> None:
    """Wan2.2-Animate-14B: a Wan2.1-I2V-like transformer (CLIP tokens; the noise beside the
    reference and previous-segment latents with their mask, 16 + 20 channels) with a pose patch
    embedding and face blocks fed by a motion encoder of the face video (convert_wan_to_diffusers.py's
    "Wan2.2-Animate-14B")."""
    from diffusers import WanAnimatePipeline, WanAnimateTransformer3DModel

    dims = SIZES[size]
    vision = dims["image_encoder"]
    image_encoder = _image_encoder(dims, seed + 3)
    _seed(seed + 1)
    blocks = dims["transformer"]
    transformer = WanAnimateTransformer3DModel(
        patch_size=(1, 2, 2),
        in_channels=36,
        latent_channels=16,
        out_channels=16,
        text_dim=dims["text_encoder"]["d_model"],
        freq_dim=256,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=vision["hidden_size"],
        added_kv_proj_dim=blocks["num_attention_heads"] * blocks["attention_head_dim"],
        rope_max_seq_len=1024,
        **blocks,
        **ANIMATE_FACE.get(size, {}),
    )
    pipe = WanAnimatePipeline(
        tokenizer=_tokenizer(VOCAB_SIZE),
        text_encoder=_text_encoder(dims, seed),
        vae=_vae21(dims, seed + 2),
        scheduler=_scheduler(5.0),
        image_processor=_image_processor(),
        image_encoder=image_encoder,
        transformer=transformer,
    )
    pipe.register_to_config(image_processor=("transformers", "CLIPImageProcessor"))
    pipe.save_pretrained(out, safe_serialization=True)


# Wan2.2-S2V at `tiny` size: the transformer (a head dimension Wan's rotary split divides, 24; audio after
# blocks 0 and 4), Wan2.1's VAE at its real depth (the layout diffusers' converter of the release's file maps)
# and a wav2vec2 of the release's layer layout (conv stride 320, stable layer norm), small.
S2V_TINY = {
    "transformer": dict(
        dim=48, ffn_dim=64, freq_dim=32, num_heads=2, num_layers=5, num_audio_token=4, audio_inject_layers=(0, 4)
    ),
    "vae": dict(base_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2),
    "audio_encoder": dict(
        hidden_size=16,
        num_hidden_layers=24,  # the release's: the transformer weighs its 25 hidden states
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=[8] * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        do_stable_layer_norm=True,
        feat_extract_norm="layer",
        vocab_size=8,
    ),
}


def _build_s2v_22(out: Path, size: str, seed: int) -> None:
    """Wan2.2-S2V-14B's release layout (no diffusers format exists): the transformer in Wan's original names
    and safetensors, the VAE and the T5 encoder as the torch pickles the release ships, the tokenizer folder
    and wav2vec2 in transformers' format (s2v/release.py)."""
    import torch
    from diffusers import AutoencoderKLWan
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    from wan_triton.checkpoints.original_names import umt5_to_original, vae_in_original_names
    from wan_triton.s2v import release
    from wan_triton.s2v.transformer import S2VConfig, S2VTransformer

    if size != "tiny":
        raise ValueError("s2v-2.2 comes in size tiny only")
    dims = SIZES[size]
    audio = S2V_TINY["audio_encoder"]
    _seed(seed + 1)
    config = S2VConfig(
        text_dim=dims["text_encoder"]["d_model"],
        audio_dim=audio["hidden_size"],
        **S2V_TINY["transformer"],
    )
    release.write_transformer(S2VTransformer(config), out)
    _seed(seed + 2)
    vae = AutoencoderKLWan(z_dim=16, attn_scales=[], temperal_downsample=[False, True, True], **S2V_TINY["vae"])
    torch.save(vae_in_original_names(vae.state_dict()), out / release.VAE_PICKLE)
    text = umt5_to_original(_text_encoder(dims, seed).state_dict())
    torch.save({name: tensor.to(torch.bfloat16) for name, tensor in text.items()}, out / release.TEXT_ENCODER_PICKLE)
    _tokenizer(VOCAB_SIZE).save_pretrained(out / release.TOKENIZER)
    _seed(seed + 3)
    Wav2Vec2ForCTC(Wav2Vec2Config(**audio)).eval().save_pretrained(out / release.AUDIO_ENCODER)
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=True)
    extractor.save_pretrained(out / release.AUDIO_ENCODER)


VARIANTS: dict[str, Variant] = {
    "t2v-2.1": Variant("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", _build_t2v_21),
    "i2v-2.1": Variant("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", _build_i2v_21),
    "flf2v-2.1": Variant("Wan-AI/Wan2.1-FLF2V-14B-720P-Diffusers", partial(_build_i2v_21, last_frame=True)),
    "ti2v-2.2": Variant("Wan-AI/Wan2.2-TI2V-5B-Diffusers", _build_ti2v_22),
    "t2v-a14b": Variant("Wan-AI/Wan2.2-T2V-A14B-Diffusers", partial(_build_a14b, image=False)),
    "i2v-a14b": Variant("Wan-AI/Wan2.2-I2V-A14B-Diffusers", partial(_build_a14b, image=True)),
    "vace-2.1": Variant("Wan-AI/Wan2.1-VACE-1.3B-diffusers", _build_vace_21),
    "animate-2.2": Variant("Wan-AI/Wan2.2-Animate-14B-Diffusers", _build_animate_22),
    "s2v-2.2": Variant("Wan-AI/Wan2.2-S2V-14B", _build_s2v_22),
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


def build_lora(checkpoint: str | Path, out: str | Path, seed: int = 0, rank: int = 4) -> Path:
    """A random LoRA for a checkpoint's transformer (attention projections), made with peft and
    saved by diffusers' own LoRA writer: the diffusers/peft format users load. Returns the file."""
    import torch
    from diffusers import WanPipeline, WanTransformer3DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = WanTransformer3DModel.from_pretrained(checkpoint, subfolder="transformer", use_safetensors=True)
    torch.manual_seed(seed)
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"lora-{seed}.safetensors"
    WanPipeline.save_lora_weights(out, transformer_lora_layers=get_peft_model_state_dict(transformer), weight_name=name)
    return out / name
