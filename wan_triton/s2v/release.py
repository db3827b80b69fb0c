"""The release layout of `Wan-AI/Wan2.2-S2V-14B`, which has no diffusers-format folder:

    config.json                                      the transformer's (`_class_name` WanModel_S2V)
    diffusion_pytorch_model-0000N-of-00004.safetensors, diffusion_pytorch_model.safetensors.index.json
    Wan2.1_VAE.pth, models_t5_umt5-xxl-enc-bf16.pth  Wan's VAE and UMT5-XXL encoder, torch pickles
    google/umt5-xxl/                                 the tokenizer
    wav2vec2-large-xlsr-53-english/                  the audio encoder, transformers' format

Only safetensors load (R20), so the two pickles are converted once, by the operator
(`wan-triton convert-release DIR`, `convert_pickles`), into diffusers-format folders beside them,
`vae/` and `text_encoder/`, which the serving code then loads as it loads any Wan checkpoint's.
`torch.load(weights_only=True)` reads them there: tensors only, no code runs. The transformer keeps
Wan's original names in safetensors (one file, or shards beside their index), read and written here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from wan_triton.contract import S2V_RELEASE_CLASS, is_s2v_release
from wan_triton.pipeline.checkpoint import UNIPC_FLOW, Checkpoint
from wan_triton.s2v.transformer import RELEASE_SWITCHES, S2VConfig, S2VTransformer

CONFIG = "config.json"
WEIGHTS = "diffusion_pytorch_model"  # .safetensors, or -0000N-of-0000M.safetensors with .safetensors.index.json
VAE_PICKLE = "Wan2.1_VAE.pth"
TEXT_ENCODER_PICKLE = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER = "google/umt5-xxl"
AUDIO_ENCODER = "wav2vec2-large-xlsr-53-english"
PICKLED = {"vae": VAE_PICKLE, "text_encoder": TEXT_ENCODER_PICKLE}  # converted folder -> the release's pickle
# The release's sampler (wan/configs/wan_s2v_14B.py): UniPC on flow sigmas, shift 3 (its 40 steps and guidance
# 4.5 are the task's defaults, contract.TASK_DEFAULTS).
FLOW_SHIFT = 3.0


is_release = is_s2v_release


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
    config = {
        "_class_name": S2V_RELEASE_CLASS,
        "model_type": "s2v",
        **dataclasses.asdict(model.config),
        **RELEASE_SWITCHES,
    }
    (root / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    state = in_original_names({name: t.detach().contiguous() for name, t in model.state_dict().items()})
    save_file(dict(sorted(state.items())), root / f"{WEIGHTS}.safetensors")
    return root


class ReleaseError(ValueError):
    """The folder is not a loadable S2V release: the message says what is missing and how to fix it."""


@dataclass(frozen=True)
class Release(Checkpoint):
    """A Wan2.2-S2V release folder, its parts loaded one by one as a diffusers folder's (`Checkpoint`, whose
    loaders of the converted `vae/` and `text_encoder/` it keeps), so the stages' code takes either."""

    @classmethod
    def open(cls, path: str | Path) -> Release:
        root = Path(path).expanduser().resolve()
        if not is_release(root):
            raise ReleaseError(
                f"{root} is not a Wan2.2-S2V release: {CONFIG} with _class_name {S2V_RELEASE_CLASS} is missing"
            )
        for part, pickle in PICKLED.items():
            if not (root / part / "config.json").is_file():
                raise ReleaseError(
                    f"{root}: {part}/ is missing; only safetensors load, so convert {pickle} once with "
                    f"`wan-triton convert-release {root}`"
                )
        return cls(root)

    def has(self, part: str) -> bool:
        return part in {"vae", "text_encoder", "tokenizer", "transformer", "audio_encoder", "scheduler"}

    def config(self, part: str) -> dict:
        if part == "transformer":
            return json.loads((self.root / CONFIG).read_text())
        return json.loads((self.root / part / "config.json").read_text())

    def weight_files(self, part: str) -> list[Path]:
        """The files whose bytes define a part, for export manifests."""
        if part == "transformer":
            return [self.root / CONFIG, *weight_files(self.root)]
        folder = self.root / {"audio_encoder": AUDIO_ENCODER}.get(part, part)
        return sorted(p for p in folder.iterdir() if p.suffix in {".json", ".safetensors"})

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.root / TOKENIZER)

    def audio_encoder(self, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        """wav2vec2's encoder. The release ships it as Wav2Vec2ForCTC, loaded as that (the encoder alone would
        log the CTC head's weights as unexpected); its head is not used."""
        from transformers import Wav2Vec2ForCTC

        model = Wav2Vec2ForCTC.from_pretrained(self.root / AUDIO_ENCODER, torch_dtype=dtype, use_safetensors=True)
        return model.wav2vec2.to(device).eval()

    def transformer(
        self,
        name: str = "transformer",
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
        gguf: Path | None = None,
    ) -> S2VTransformer:
        if name != "transformer" or gguf is not None:
            raise ReleaseError(f"{self.root}: S2V has one transformer, from the release's safetensors")
        return load_transformer(self.root, dtype, device)

    boundary_ratio = None  # one transformer: no expert switch
    expand_timesteps = False

    @property
    def scheduler_class(self) -> type:
        from diffusers import UniPCMultistepScheduler

        return UniPCMultistepScheduler

    @cached_property
    def scheduler_config(self) -> dict:

        return dict(self.scheduler_class(flow_shift=FLOW_SHIFT, **UNIPC_FLOW).config)


def convert_pickles(root: Path) -> list[Path]:
    """The release's VAE and T5 encoder, from torch pickles (read with `weights_only=True`: tensors, no
    code) to diffusers-format folders beside them; the folders written. A part already converted is kept."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
    from transformers import UMT5Config, UMT5EncoderModel

    from wan_triton.checkpoints.original_names import umt5_from_original

    root = Path(root)
    written = []
    for part, pickle in PICKLED.items():
        out = root / part
        if (out / "config.json").is_file():
            continue
        if not (root / pickle).is_file():
            raise ReleaseError(f"{root}: {pickle} is missing")
        state = torch.load(root / pickle, map_location="cpu", weights_only=True, mmap=True)
        state = state.get("model_state", state)  # some of Wan's VAE files nest the weights
        if part == "vae":
            model = AutoencoderKLWan(**vae_layout(state))
            model.load_state_dict(convert_wan_vae_to_diffusers(state), strict=True)
        else:
            model = UMT5EncoderModel(UMT5Config(**t5_layout(state)))
            model.load_state_dict(umt5_from_original(state), strict=True)
        dtype = next(iter(state.values())).dtype  # kept: the T5 file is bf16, the VAE's float32
        (model if dtype == torch.float32 else model.to(dtype)).save_pretrained(out, safe_serialization=True)
        written.append(out)
    return written


def vae_layout(state: dict) -> dict:
    """AutoencoderKLWan's arguments for Wan2.1's VAE weights (original names). Its widths come from the weights;
    its depth is the release's (diffusers' converter maps that layout only)."""
    return dict(
        base_dim=state["encoder.conv1.weight"].shape[0],
        z_dim=state["conv2.weight"].shape[0],
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=[False, True, True],
    )


def t5_layout(state: dict) -> dict:
    """UMT5Config's fields for Wan's T5 encoder weights (original names), read from their shapes."""
    buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
    vocab, width = state["token_embedding.weight"].shape
    return dict(
        vocab_size=vocab,
        d_model=width,
        d_kv=state["blocks.0.attn.q.weight"].shape[0] // heads,
        d_ff=state["blocks.0.ffn.fc1.weight"].shape[0],
        num_layers=len({name.split(".")[1] for name in state if name.startswith("blocks.")}),
        num_heads=heads,
        relative_attention_num_buckets=buckets,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
    )
