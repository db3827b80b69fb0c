"""Load the parts of a diffusers-format Wan checkpoint folder, each on its own.

Every stage loads only what it runs, so a Triton model instance holds only its own weights.
Only safetensors load and nothing is ever downloaded (R20).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

# Wan's published scheduler config: UniPC on flow sigmas (convert_wan_to_diffusers.py); only
# flow_shift differs between checkpoints.
UNIPC_FLOW = dict(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000)
TRANSFORMERS = ("WanTransformer3DModel", "WanVACETransformer3DModel", "WanAnimateTransformer3DModel")


@dataclass(frozen=True)
class Checkpoint:
    """A Wan checkpoint folder as `diffusers` writes it (`model_index.json` and one folder per part)."""

    root: Path

    @classmethod
    def open(cls, path: str | os.PathLike) -> Checkpoint:
        root = Path(path).expanduser().resolve()
        if not (root / "model_index.json").is_file():
            raise FileNotFoundError(f"{root} is not a diffusers checkpoint: model_index.json is missing")
        return cls(root)

    @cached_property
    def index(self) -> dict:
        return json.loads((self.root / "model_index.json").read_text())

    def has(self, part: str) -> bool:
        entry = self.index.get(part)
        return bool(entry and entry[0]) and (self.root / part).is_dir()

    @property
    def boundary_ratio(self) -> float | None:
        return self.index.get("boundary_ratio")

    @property
    def expand_timesteps(self) -> bool:
        return bool(self.index.get("expand_timesteps", False))

    def config(self, part: str) -> dict:
        folder = self.root / part
        name = "scheduler_config.json" if part == "scheduler" else "config.json"
        return json.loads((folder / name).read_text())

    def weight_files(self, part: str) -> list[Path]:
        """The files whose bytes define a part (configs and weights), for export manifests."""
        folder = self.root / part
        if not folder.is_dir():  # e.g. the image encoder asked of a checkpoint without one
            raise FileNotFoundError(f"{self.root} has no {part} folder")
        return sorted(p for p in folder.iterdir() if p.suffix in {".json", ".safetensors", ".model"})

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.root / "tokenizer")

    def text_encoder(self, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        from transformers import UMT5EncoderModel

        model = UMT5EncoderModel.from_pretrained(self.root / "text_encoder", torch_dtype=dtype, use_safetensors=True)
        return model.to(device).eval()

    def image_encoder(self, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        """The CLIP vision tower of Wan2.1 I2V checkpoints (`has("image_encoder")`)."""
        from transformers import CLIPVisionModel

        model = CLIPVisionModel.from_pretrained(self.root / "image_encoder", torch_dtype=dtype, use_safetensors=True)
        return model.to(device).eval()

    def image_processor(self):
        """CLIP preprocessing (resize, center crop, normalise), the class diffusers loads it with."""
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor.from_pretrained(self.root / "image_processor")

    def transformer(
        self,
        name: str = "transformer",
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
        gguf: Path | None = None,
    ):
        """The transformer in `name`, of the class its config names (Wan's, or VACE's with control blocks);
        with `gguf`, its weights from that file instead (checkpoints/gguf.py), kept quantized and
        dequantized layer by layer as they run (diffusers' GGUF loader), its config from `name`."""
        import diffusers

        kind = self.config(name).get("_class_name")
        if kind not in TRANSFORMERS:
            raise ValueError(
                f"{self.root / name}: unsupported transformer {kind}; supported: {', '.join(TRANSFORMERS)}"
            )
        if gguf is not None:
            model = getattr(diffusers, kind).from_single_file(
                str(gguf),
                config=str(self.root),
                subfolder=name,
                torch_dtype=dtype,
                quantization_config=diffusers.GGUFQuantizationConfig(compute_dtype=dtype),
            )
        else:
            model = getattr(diffusers, kind).from_pretrained(
                self.root, subfolder=name, torch_dtype=dtype, use_safetensors=True
            )
        return model.to(device).eval()

    def vae(self, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        """From `vae/` itself: diffusers' `subfolder` lookup falls back to a weights file at the root, which in
        Wan2.2-S2V's release layout is the transformer's."""
        from diffusers import AutoencoderKLWan

        model = AutoencoderKLWan.from_pretrained(self.root / "vae", torch_dtype=dtype, use_safetensors=True)
        return model.to(device).eval()

    @cached_property
    def scheduler_class(self) -> type:
        import diffusers

        library, name = self.index["scheduler"]
        if library != "diffusers" or not hasattr(diffusers, name):
            raise ValueError(f"unsupported scheduler {library}.{name}")
        return getattr(diffusers, name)

    @cached_property
    def scheduler_config(self) -> dict:
        return dict(self.scheduler_class.load_config(self.root / "scheduler"))
