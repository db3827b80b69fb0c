"""Wan transformers as GGUF files, the way the community ships them (city96's `Wan2.1-T2V-14B-gguf` and
the like): the original Wan key names, the large matrices block-quantized (Q8_0, Q4_0, ...), the rest
in float32. `serve --gguf FILE` loads one in place of a checkpoint's transformer (pipeline/checkpoint.py,
through diffusers' own GGUF loader); `wan-triton gguf` writes one from a diffusers-format transformer,
for a fine-tune of one's own and for the tests.

GGUF holds tensors and metadata only (no pickled code), so loading one runs nothing from the file (R20).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wan_triton.contract import EXPERTS

QUANT_TYPES = ("Q8_0", "Q5_0", "Q4_0", "F16")  # what `wan-triton gguf` writes; diffusers loads more
GGUF_ENV = "WAN_TRITON_GGUF"  # serve --gguf, as the denoiser stage reads it: expert=path, comma-separated

# diffusers' names -> Wan's original ones, in the order they must apply: the inverse of diffusers'
# `convert_wan_transformer_to_diffusers` (which `write` checks the result against).
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


class GGUFError(ValueError):
    """A GGUF file or option that cannot serve; the message names it."""


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


def write(transformer: Path, out: Path, quant: str = "Q8_0") -> dict[str, int]:
    """`transformer` (a diffusers-format folder: config.json and safetensors) as one GGUF file at `out`,
    its 2-D weights quantized to `quant` where their rows divide into the type's blocks, the rest in
    float32 (as the community's files keep norms, biases and the patch embedding). Returns how many
    tensors went each way."""
    import gguf
    import torch
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
    from safetensors.torch import load_file

    if quant not in QUANT_TYPES:
        raise GGUFError(f"quantization type {quant!r}; allowed: {', '.join(QUANT_TYPES)}")
    files = sorted(Path(transformer).glob("*.safetensors"))
    if not files:
        raise GGUFError(f"{transformer} has no safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state |= load_file(file)
    original = {original_name(name): tensor for name, tensor in state.items()}
    back = convert_wan_transformer_to_diffusers(dict(original))
    if set(back) != set(state):  # diffusers' loader must read back exactly these names
        raise GGUFError(f"{transformer}: names diffusers would not map back: {sorted(set(state) ^ set(back))[:5]}")
    kind = gguf.GGMLQuantizationType[quant]
    block = gguf.GGML_QUANT_SIZES[kind][0]
    # diffusers keeps these in float32 whatever the file says (the model's `_keep_in_fp32_modules`)
    keep = ("time_embedder", "scale_shift_table", "norm1", "norm2", "norm3")
    kept = {original_name(name) for name in state if any(part in name for part in keep)}
    writer = gguf.GGUFWriter(str(out), arch="wan")
    counts = {quant: 0, "F32": 0}
    for name, tensor in original.items():
        data = tensor.float().numpy()
        if data.ndim == 2 and data.shape[-1] % block == 0 and name not in kept:
            writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
            counts[quant] += 1
        else:
            writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
            counts["F32"] += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts


def environment(files: dict[str, Path]) -> str:
    return ",".join(f"{expert}={path}" for expert, path in files.items())


def parse(text: str | None) -> dict[str, Path]:
    """The environment's form (`transformer=PATH,transformer_2=PATH`) as {expert: file}."""
    files: dict[str, Path] = {}
    for part in filter(None, (text or "").split(",")):
        expert, _, path = part.partition("=")
        if expert not in EXPERTS or not path:
            raise GGUFError(f"GGUF option {part!r}: expected EXPERT=PATH, EXPERT one of {', '.join(EXPERTS)}")
        files[expert] = Path(path)
    return files


def for_checkpoint(paths: list[str], experts: tuple[str, ...]) -> dict[str, Path]:
    """`serve --gguf` as given, checked against the checkpoint's experts before anything starts: one file
    per expert, in the order of `experts` (Wan2.2 A14B: the high-noise one first), each a GGUF file."""
    if len(paths) > len(experts):
        raise GGUFError(f"--gguf given {len(paths)} times; this checkpoint has {len(experts)} transformer(s)")
    files: dict[str, Path] = {}
    for expert, given in zip(experts, paths, strict=False):
        path = Path(given).expanduser().resolve()
        if not path.is_file():
            raise GGUFError(f"--gguf {given}: no such file")
        with path.open("rb") as head:
            if head.read(4) != b"GGUF":
                raise GGUFError(f"--gguf {given}: not a GGUF file")
        files[expert] = path
    return files
