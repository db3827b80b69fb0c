"""LoRA adapters per request: which files may load (the allow-list), and the adapters resident
on a transformer (least recently used evicted first).

A request names adapters, never paths: names map to files through one allow-list under one
server-side root, checked again at every load (a symlink swapped later still cannot leave the
root, R19), and only `.safetensors` load (R20). Loading goes through diffusers' Wan LoRA loader,
so the diffusers/peft format and the Wan community formats it converts all work, and through
peft on the model, exactly as `WanPipeline.load_lora_weights` + `set_adapters` do.
"""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from wan_triton.contract import RequestError

FIELD = "lora_names"
# Set by `serve --loras FILE [--lora-cache N] [--fuse-lora NAME:SCALE,...]` for the models.
ALLOW_LIST_ENV = "WAN_TRITON_LORAS"
CACHE_ENV = "WAN_TRITON_LORA_CACHE"
FUSE_ENV = "WAN_TRITON_FUSE_LORAS"


def parse_adapters(spec: str) -> tuple[list[str], list[float]]:
    """ "a:0.5,b" -> (["a", "b"], [0.5, 1.0])."""
    names, scales = [], []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, scale = item.partition(":")
        names.append(name)
        scales.append(float(scale) if scale else 1.0)
    return names, scales


@dataclass(frozen=True)
class AllowList:
    """Adapter names -> files under `root`. The file is JSON: {"root": DIR (default: the file's
    folder), "adapters": {"name": "path/under/root.safetensors", ...}}."""

    root: Path
    adapters: dict[str, str]

    @classmethod
    def from_file(cls, path: str | Path) -> AllowList:
        path = Path(path)
        values = json.loads(path.read_text())
        unknown = sorted(set(values) - {"root", "adapters"})
        if unknown or not isinstance(values.get("adapters"), dict):
            raise ValueError(f"{path}: expected {{'root': DIR, 'adapters': {{name: file}}}}, got keys {sorted(values)}")
        root = (path.parent / values.get("root", ".")).resolve()
        return cls(root, {str(name): str(file) for name, file in values["adapters"].items()})

    def resolve(self, name: str) -> Path:
        """The adapter's file, or a RequestError saying why it cannot load."""
        if name not in self.adapters:
            allowed = ", ".join(sorted(self.adapters)) or "none"
            raise RequestError(FIELD, f"{name!r} is not an allowed adapter; allowed: {allowed}")
        real = (self.root / self.adapters[name]).resolve()  # follows symlinks; an absolute entry stays absolute
        if not real.is_relative_to(self.root):
            raise RequestError(FIELD, f"{name!r} resolves outside the adapter root; refused")
        if real.suffix != ".safetensors":
            raise RequestError(FIELD, f"{name!r} is a {real.suffix or 'suffix-less'} file; only .safetensors load")
        if not real.is_file():
            raise RequestError(FIELD, f"{name!r}: its file is missing on the server")
        return real

    def problems(self) -> dict[str, str]:
        """Entries that cannot load, with the reason: for the server's log at start."""
        found = {}
        for name in self.adapters:
            try:
                self.resolve(name)
            except RequestError as exc:
                found[name] = str(exc)
        return found


def state_dict(path: Path, model) -> dict:
    """An adapter file as diffusers loads it for a Wan transformer: community formats converted,
    a T2V adapter widened for an I2V transformer."""
    from diffusers import WanPipeline

    state = WanPipeline.lora_state_dict(str(path), use_safetensors=True)
    return WanPipeline._maybe_expand_t2v_lora_for_i2v(model, state)


class Adapters:
    """Adapters resident on one transformer, up to `capacity`; `use` activates some for a call."""

    def __init__(self, model, allow: AllowList, capacity: int = 4) -> None:
        self.model, self.allow, self.capacity = model, allow, capacity
        self.loaded: OrderedDict[str, None] = OrderedDict.fromkeys(getattr(model, "peft_config", {}))

    def _load(self, name: str, keep: Sequence[str]) -> None:
        path = self.allow.resolve(name)  # again at load: the file system may have changed
        while len(self.loaded) >= self.capacity:
            victim = next((n for n in self.loaded if n not in keep), None)
            if victim is None:
                raise RequestError(FIELD, f"{len(keep)} adapters at once; this server keeps at most {self.capacity}")
            self.model.delete_adapters(victim)
            del self.loaded[victim]
        self.model.load_lora_adapter(state_dict(path, self.model), adapter_name=name, prefix="transformer")
        self.loaded[name] = None

    @contextlib.contextmanager
    def use(self, names: Sequence[str], scales: Sequence[float]) -> Iterator[None]:
        """These adapters at these scales for the duration; none at all outside it, so a request
        without adapters runs the base weights exactly."""
        if not names:
            yield
            return
        for name in names:
            if name not in self.loaded:
                self._load(name, names)
            self.loaded.move_to_end(name)
        self.model.enable_lora()
        self.model.set_adapters(list(names), list(scales))
        try:
            yield
        finally:
            self.model.disable_lora()

    def fuse(self, names: Sequence[str], scales: Sequence[float]) -> None:
        """A fixed adapter set merged into the weights (a dedicated deployment): no per-step cost,
        no switching; the adapters' layers are gone afterwards."""
        for name in names:
            self._load(name, names)
        self.model.set_adapters(list(names), list(scales))
        self.model.fuse_lora(adapter_names=list(names))
        self.model.unload_lora()
        self.loaded.clear()
