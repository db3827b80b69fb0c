"""Wan's original parameter names (the release layouts, the community's GGUF files) from diffusers' ones: the
inverse of diffusers' `convert_wan_transformer_to_diffusers`, which the writers check their output against."""

from __future__ import annotations

# diffusers' names -> Wan's original ones, in the order they must apply.
_TO_ORIGINAL = (
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
    ("attn1", "self_attn"),
    ("attn2", "cross_attn"),
    (".to_out.0.", ".o."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    (".add_k_proj.", ".k_img."),
    (".add_v_proj.", ".v_img."),
    (".norm_added_k.", ".norm_k_img."),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
    (".norm2.", ".norm__placeholder."),  # Wan's norm3 is diffusers' norm2, and the other way round
    (".norm3.", ".norm2."),
    (".norm__placeholder.", ".norm3."),
)


def original_name(name: str) -> str:
    """A diffusers WanTransformer3DModel (or VACE) parameter's name in Wan's original layout."""
    if name.startswith("vace_blocks."):
        name = name.replace(".proj_in.", ".before_proj.").replace(".proj_out.", ".after_proj.")
    elif name == "scale_shift_table":
        return "head.modulation"
    elif name.startswith("proj_out."):
        return "head.head." + name.removeprefix("proj_out.")
    for diffusers_name, original in _TO_ORIGINAL:
        name = name.replace(diffusers_name, original)
    if name.startswith(("blocks.", "vace_blocks.")) and name.endswith(".scale_shift_table"):
        name = name.removesuffix("scale_shift_table") + "modulation"
    return name


def in_original_names(state: dict) -> dict:
    """`state` (a diffusers Wan transformer's) under Wan's original names, checked: diffusers' own converter
    maps every name back to where it came from."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    original = {original_name(name): tensor for name, tensor in state.items()}
    back = convert_wan_transformer_to_diffusers(dict(original))
    if set(back) != set(state):
        raise ValueError(f"names diffusers would not map back: {sorted(set(state) ^ set(back))[:5]}")
    return original


# Wan's VAE (`Wan2.1_VAE.pth`): diffusers' residual-block names -> the original `residual` Sequential's indices.
_VAE_RESIDUAL = (
    ("norm1.gamma", "residual.0.gamma"),
    ("conv1.", "residual.2."),
    ("norm2.gamma", "residual.3.gamma"),
    ("conv2.", "residual.6."),
    ("conv_shortcut.", "shortcut."),
)
_VAE_FIXED = {
    "quant_conv": "conv1",
    "post_quant_conv": "conv2",
    "encoder.conv_in": "encoder.conv1",
    "decoder.conv_in": "decoder.conv1",
    "encoder.norm_out": "encoder.head.0",
    "encoder.conv_out": "encoder.head.2",
    "decoder.norm_out": "decoder.head.0",
    "decoder.conv_out": "decoder.head.2",
}
VAE_RESNETS = 3  # the decoder's resnets per up block in the release's VAE (num_res_blocks 2, plus one)


def original_vae_name(name: str) -> str:
    """An AutoencoderKLWan (Wan2.1's layout) parameter's name in `Wan2.1_VAE.pth`."""
    module, _, leaf = name.rpartition(".")
    if module in _VAE_FIXED:
        return f"{_VAE_FIXED[module]}.{leaf}"
    parts = name.split(".")
    if parts[1] == "mid_block":  # resnets.0 -> middle.0, attentions.0 -> middle.1, resnets.1 -> middle.2
        index = 1 if parts[2] == "attentions" else 2 * int(parts[3])
        name = ".".join([parts[0], "middle", str(index), *parts[4:]])
    elif parts[1] == "down_blocks":
        name = name.replace("encoder.down_blocks.", "encoder.downsamples.")
    elif parts[1] == "up_blocks":  # up block b: resnets at 4b + r, its upsampler at 4b + 3
        block = int(parts[2])
        index = 4 * block + (VAE_RESNETS if parts[3] == "upsamplers" else int(parts[4]))
        name = ".".join(["decoder", "upsamples", str(index), *parts[5:]])
    for diffusers_name, original in _VAE_RESIDUAL:
        if ".resample." not in name and ".time_conv." not in name and ".middle.1." not in name:
            name = name.replace(f".{diffusers_name}", f".{original}")
    return name


def vae_in_original_names(state: dict) -> dict:
    """An AutoencoderKLWan's `state` under the names of `Wan2.1_VAE.pth`, checked against diffusers' converter."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    original = {original_vae_name(name): tensor for name, tensor in state.items()}
    back = convert_wan_vae_to_diffusers(dict(original))
    if set(back) != set(state):
        raise ValueError(f"VAE names diffusers would not map back: {sorted(set(state) ^ set(back))[:5]}")
    return original


# Wan's T5 encoder (`models_t5_umt5-xxl-enc-bf16.pth`, wan/modules/t5.py) -> transformers' UMT5EncoderModel.
_T5_BLOCK = (
    ("norm1.weight", "layer.0.layer_norm.weight"),
    ("attn.q.weight", "layer.0.SelfAttention.q.weight"),
    ("attn.k.weight", "layer.0.SelfAttention.k.weight"),
    ("attn.v.weight", "layer.0.SelfAttention.v.weight"),
    ("attn.o.weight", "layer.0.SelfAttention.o.weight"),
    ("pos_embedding.embedding.weight", "layer.0.SelfAttention.relative_attention_bias.weight"),
    ("norm2.weight", "layer.1.layer_norm.weight"),
    ("ffn.gate.0.weight", "layer.1.DenseReluDense.wi_0.weight"),
    ("ffn.fc1.weight", "layer.1.DenseReluDense.wi_1.weight"),
    ("ffn.fc2.weight", "layer.1.DenseReluDense.wo.weight"),
)


def umt5_from_original(state: dict) -> dict:
    """Wan's T5 encoder weights under UMT5EncoderModel's names (the embedding under both of its names)."""
    block = dict(_T5_BLOCK)
    named = {}
    for name, tensor in state.items():
        if name == "token_embedding.weight":
            named["shared.weight"] = named["encoder.embed_tokens.weight"] = tensor
        elif name == "norm.weight":
            named["encoder.final_layer_norm.weight"] = tensor
        else:
            _, index, rest = name.split(".", 2)
            if rest not in block:
                raise ValueError(f"not a weight of Wan's T5 encoder: {name}")
            named[f"encoder.block.{index}.{block[rest]}"] = tensor
    return named


def umt5_to_original(state: dict) -> dict:
    """A UMT5EncoderModel's weights under Wan's T5 names, the inverse of `umt5_from_original`."""
    block = {hf: original for original, hf in _T5_BLOCK}
    named = {}
    for name, tensor in state.items():
        if name == "shared.weight":
            named["token_embedding.weight"] = tensor
        elif name == "encoder.final_layer_norm.weight":
            named["norm.weight"] = tensor
        elif name.startswith("encoder.block."):
            _, _, index, rest = name.split(".", 3)
            named[f"blocks.{index}.{block[rest]}"] = tensor
    return named
