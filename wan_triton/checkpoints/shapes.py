"""The published Wan checkpoints' shapes as folders of configs alone, no weights: what `wan-triton plan`
reads, written for checkpoints too large to build here (14B, A14B), by the same classes the tiny builder
uses (instantiated on torch's meta device, so nothing is allocated).

    wan-triton tiny-checkpoint --out DIR --shape t2v-14b
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from wan_triton.contract import S2V_RELEASE_CLASS

# UMT5-XXL (google/umt5-xxl, Wan's text encoder), CLIP ViT-H/14 (Wan2.1 I2V), the Wan VAEs.
UMT5_XXL = dict(
    vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu"
)
CLIP_VIT_H = dict(
    hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32, projection_dim=1024
)
VAE_21 = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True])
# Wan2.2's VAE latent statistics (convert_wan_to_diffusers.py, vae22_diffusers_config).
WAN22_LATENTS_MEAN = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
]  # fmt: skip
WAN22_LATENTS_STD = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
]  # fmt: skip


# The Wan2.2 VAE's layout (convert_wan_to_diffusers.py, vae22_diffusers_config): residual blocks, 2x2
# pixel patches in and out (12 channels), 16 px per latent each side; the tiny builder shrinks its widths.
VAE_22_LAYOUT = dict(
    z_dim=48,
    in_channels=12,
    out_channels=12,
    is_residual=True,
    patch_size=2,
    scale_factor_spatial=16,
    scale_factor_temporal=4,
    temperal_downsample=[False, True, True],
    latents_mean=WAN22_LATENTS_MEAN,
    latents_std=WAN22_LATENTS_STD,
)
VAE_22 = dict(base_dim=160, decoder_base_dim=256, dim_mult=[1, 2, 4, 4], num_res_blocks=2, **VAE_22_LAYOUT)
TRANSFORMER = dict(patch_size=[1, 2, 2], text_dim=4096, freq_dim=256, cross_attn_norm=True, eps=1e-6)
T_1_3B = dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30)
T_14B = dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40)
T_5B = dict(num_attention_heads=24, attention_head_dim=128, ffn_dim=14336, num_layers=30)


@dataclass(frozen=True)
class Shape:
    """One published checkpoint's layout: pipeline class, transformers (name -> config), VAE, extras."""

    repository: str  # the Hugging Face folder it stands for
    pipeline: str
    transformers: dict[str, dict]
    vae: dict
    image_encoder: dict | None = None
    index: dict = field(default_factory=dict)  # model_index.json's own keys (boundary_ratio, ...)
    flow_shift: float = 5.0  # the published scheduler's (UniPC on flow sigmas)


SHAPES: dict[str, Shape] = {
    "t2v-1.3b": Shape(
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "WanPipeline", {"transformer": {**T_1_3B, "in_channels": 16}}, VAE_21
    ),
    "t2v-14b": Shape(
        "Wan-AI/Wan2.1-T2V-14B-Diffusers", "WanPipeline", {"transformer": {**T_14B, "in_channels": 16}}, VAE_21
    ),
    "i2v-14b": Shape(
        "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
        "WanImageToVideoPipeline",
        {"transformer": {**T_14B, "in_channels": 36, "image_dim": 1280, "added_kv_proj_dim": 5120}},
        VAE_21,
        image_encoder=CLIP_VIT_H,
    ),
    "t2v-a14b": Shape(
        "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
        "WanPipeline",
        {"transformer": {**T_14B, "in_channels": 16}, "transformer_2": {**T_14B, "in_channels": 16}},
        VAE_21,
        index={"boundary_ratio": 0.875},
    ),
    "i2v-a14b": Shape(
        "Wan-AI/Wan2.2-I2V-A14B-Diffusers",
        "WanImageToVideoPipeline",
        {"transformer": {**T_14B, "in_channels": 36}, "transformer_2": {**T_14B, "in_channels": 36}},
        VAE_21,
        index={"boundary_ratio": 0.9},
    ),
    "ti2v-5b": Shape(
        "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        "WanPipeline",
        {"transformer": {**T_5B, "in_channels": 48, "out_channels": 48}},
        VAE_22,
        index={"expand_timesteps": True},
    ),
    # Wan's release layout, its pickles as `convert-release` leaves them (s2v/release.py); the transformer's
    # config is S2VConfig's defaults, the release's.
    "s2v-14b": Shape("Wan-AI/Wan2.2-S2V-14B", S2V_RELEASE_CLASS, {"transformer": {}}, VAE_21, flow_shift=3.0),
}
# wav2vec2-large-xlsr-53 (Wan2.2-S2V's audio encoder).
WAV2VEC2_LARGE = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    do_stable_layer_norm=True,
    feat_extract_norm="layer",
    conv_bias=True,
    vocab_size=33,
)


def write_shape(out: str | Path, name: str) -> Path:
    """A config-only folder in diffusers' layout for the published checkpoint `name` (SHAPES)."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import CLIPVisionConfig, UMT5Config

    from wan_triton.pipeline.checkpoint import UNIPC_FLOW

    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; choose from {', '.join(SHAPES)}")
    shape, root = SHAPES[name], Path(out)
    root.mkdir(parents=True, exist_ok=True)
    if shape.pipeline == S2V_RELEASE_CLASS:
        return _write_s2v_release(root, shape)
    index = {"_class_name": shape.pipeline, **shape.index}
    with torch.device("meta"):  # the classes fill in every default, as the published configs have them
        for part, config in shape.transformers.items():
            channels = {"out_channels": 16, **config}
            WanTransformer3DModel(**{**TRANSFORMER, **channels}).save_config(root / part)
            index[part] = ["diffusers", "WanTransformer3DModel"]
        AutoencoderKLWan(attn_scales=[], **shape.vae).save_config(root / "vae")
    index["vae"] = ["diffusers", "AutoencoderKLWan"]
    UMT5Config(**UMT5_XXL).save_pretrained(root / "text_encoder")
    index["text_encoder"] = ["transformers", "UMT5EncoderModel"]
    if shape.image_encoder:
        CLIPVisionConfig(image_size=224, patch_size=14, **shape.image_encoder).save_pretrained(root / "image_encoder")
        index["image_encoder"] = ["transformers", "CLIPVisionModel"]
    index.setdefault("transformer_2", [None, None])
    UniPCMultistepScheduler(flow_shift=shape.flow_shift, **UNIPC_FLOW).save_config(root / "scheduler")
    index["scheduler"] = ["diffusers", "UniPCMultistepScheduler"]
    (root / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return root


def _write_s2v_release(root: Path, shape: Shape) -> Path:
    """Wan2.2-S2V's release layout, configs only: the transformer's at the root, the converted VAE and T5
    folders, wav2vec2's folder."""
    import dataclasses

    import torch
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, Wav2Vec2Config

    from wan_triton.s2v.release import AUDIO_ENCODER, CONFIG
    from wan_triton.s2v.transformer import RELEASE_SWITCHES, S2VConfig

    config = {
        "_class_name": S2V_RELEASE_CLASS,
        "model_type": "s2v",
        **dataclasses.asdict(S2VConfig()),
        **RELEASE_SWITCHES,
    }
    (root / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    with torch.device("meta"):
        AutoencoderKLWan(attn_scales=[], **shape.vae).save_config(root / "vae")
    UMT5Config(**UMT5_XXL).save_pretrained(root / "text_encoder")
    Wav2Vec2Config(**WAV2VEC2_LARGE).save_pretrained(root / AUDIO_ENCODER)
    return root
