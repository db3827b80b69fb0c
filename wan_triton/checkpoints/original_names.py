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
