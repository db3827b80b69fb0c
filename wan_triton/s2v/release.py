"""The release layout of `Wan-AI/Wan2.2-S2V-14B`, which has no diffusers-format folder:

    config.json                                      the transformer's (`_class_name` WanModel_S2V)
    diffusion_pytorch_model-0000N-of-00004.safetensors, diffusion_pytorch_model.safetensors.index.json
    Wan2.1_VAE.pth, models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/
    wav2vec2-large-xlsr-53-english/                  transformers' format

This module reads and writes the transformer part: Wan's original names in safetensors (one file, or
shards beside their index), its config beside them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from wan_triton.s2v.transformer import RELEASE_SWITCHES, S2VConfig, S2VTransformer

CONFIG = "config.json"
CLASS_NAME = "WanModel_S2V"
WEIGHTS = "diffusion_pytorch_model"  # .safetensors, or -0000N-of-0000M.safetensors with .safetensors.index.json


def is_release(root: Path) -> bool:
    config = Path(root) / CONFIG
    return config.is_file() and json.loads(config.read_text()).get("_class_name") == CLASS_NAME


def transformer_config(root: Path) -> S2VConfig:
    return S2VConfig.from_release(json.loads((Path(root) / CONFIG).read_text()))


def weight_files(root: Path) -> list[Path]:
    """The transformer's safetensors: the index's shards when there is an index, else the one file."""
    root = Path(root)
    index = root / f"{WEIGHTS}.safetensors.index.json"
    if index.is_file():
        return sorted({root / name for name in json.loads(index.read_text())["weight_map"].values()})
    single = root / f"{WEIGHTS}.safetensors"
    if not single.is_file():
        raise FileNotFoundError(f"{root}: neither {index.name} nor {single.name}")
    return [single]


def load_transformer(root: Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> S2VTransformer:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in weight_files(root):
        state |= load_file(file, device=str(device))
    state = {name: tensor.to(dtype) for name, tensor in state.items()}
    return S2VTransformer.from_release_state_dict(transformer_config(root), state).to(device)


def write_transformer(model: S2VTransformer, root: Path) -> Path:
    """`model` in the release's layout: its config and one safetensors file, Wan's original names."""
    from safetensors.torch import save_file

    from wan_triton.checkpoints.original_names import in_original_names

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": CLASS_NAME, "model_type": "s2v", **dataclasses.asdict(model.config), **RELEASE_SWITCHES}
    (root / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    state = in_original_names({name: t.detach().contiguous() for name, t in model.state_dict().items()})
    save_file(dict(sorted(state.items())), root / f"{WEIGHTS}.safetensors")
    return root
