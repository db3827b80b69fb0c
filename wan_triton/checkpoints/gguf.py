"""Wan transformers as GGUF files, the way the community ships them (city96's `Wan2.1-T2V-14B-gguf` and
the like): the original Wan key names, the large matrices block-quantized (Q8_0, Q4_0, ...), the rest
in float32. `serve --gguf FILE` loads one in place of a checkpoint's transformer (pipeline/checkpoint.py,
through diffusers' own GGUF loader); `wan-triton gguf` writes one from a diffusers-format transformer,
for a fine-tune of one's own and for the tests.

GGUF holds tensors and metadata only (no pickled code), so loading one runs nothing from the file (R20).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from wan_triton.checkpoints.original_names import in_original_names, original_name

QUANT_TYPES = ("Q8_0", "Q5_0", "Q4_0", "F16")  # what `wan-triton gguf` writes; diffusers loads more


class GGUFError(ValueError):
    """A GGUF file or option that cannot serve; the message names it."""


def write(transformer: Path, out: Path, quant: str = "Q8_0") -> dict[str, int]:
    """`transformer` (a diffusers-format folder: config.json and safetensors) as one GGUF file at `out`,
    its 2-D weights quantized to `quant` where their rows divide into the type's blocks, the rest in
    float32 (as the community's files keep norms, biases and the patch embedding). Returns how many
    tensors went each way."""
    import diffusers
    import gguf
    import torch
    from safetensors.torch import load_file

    if quant not in QUANT_TYPES:
        raise GGUFError(f"quantization type {quant!r}; allowed: {', '.join(QUANT_TYPES)}")
    files = sorted(Path(transformer).glob("*.safetensors"))
    if not files:
        raise GGUFError(f"{transformer} has no safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state |= load_file(file)
    try:
        original = in_original_names(state)
    except ValueError as exc:
        raise GGUFError(f"{transformer}: {exc}") from exc
    kind = gguf.GGMLQuantizationType[quant]
    block = gguf.GGML_QUANT_SIZES[kind][0]
    # diffusers keeps the model class's `_keep_in_fp32_modules` in float32 whatever the file says
    model_class = getattr(diffusers, json.loads((Path(transformer) / "config.json").read_text())["_class_name"])
    keep = set(model_class._keep_in_fp32_modules or ())
    kept = {original_name(name) for name in state if keep & set(name.split("."))}
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
