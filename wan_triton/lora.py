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
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wan_triton.contract import EXPERTS, RequestError

if TYPE_CHECKING:
    import torch

FIELD = "lora_names"
# Set by `serve --loras FILE [--lora-cache N] [--fuse-lora NAME:SCALE,...]` for the models.


def parse_adapters(spec: str) -> tuple[list[str], list[float]]:
    """ "a:0.5,b" -> (["a", "b"], [0.5, 1.0])."""
    names, scales = [], []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, scale = item.partition(":")
        names.append(name)
        scales.append(float(scale) if scale else 1.0)
    return names, scales


def check_adapter(adapters: Mapping[str, Collection[str]], name: str, experts: Collection[str] = EXPERTS) -> None:
    """`name` among the allowed `adapters` (name -> the experts it loads into), all of them in `experts`
    (the checkpoint's), or a RequestError saying which is not."""
    if name not in adapters:
        allowed = ", ".join(sorted(adapters)) or "none"
        raise RequestError(FIELD, f"{name!r} is not an allowed adapter; allowed: {allowed}")
    for expert in adapters[name]:
        if expert not in experts:
            raise RequestError(FIELD, f"{name!r} loads into {expert}, which this checkpoint does not have")


@dataclass(frozen=True)
class AllowList:
    """Adapter names -> files under `root`, per transformer. The file is JSON: {"root": DIR
    (default: the file's folder), "adapters": {name: entry, ...}}, where an entry is a file (it
    loads into `transformer`, as diffusers' `load_lora_weights` does) or {expert: file} for the
    experts it loads into: {"transformer": "high.safetensors", "transformer_2": "low.safetensors"}
    for a Wan2.2 A14B pair, or one file under both keys for one adapter on both experts."""

    root: Path
    adapters: dict[str, dict[str, str]]

    @classmethod
    def from_file(cls, path: str | Path) -> AllowList:
        path = Path(path)
        values = json.loads(path.read_text())
        unknown = sorted(set(values) - {"root", "adapters"})
        if unknown or not isinstance(values.get("adapters"), dict):
            raise ValueError(f"{path}: expected {{'root': DIR, 'adapters': {{name: file}}}}, got keys {sorted(values)}")
        root = (path.parent / values.get("root", ".")).resolve()
        adapters = {}
        for name, entry in values["adapters"].items():
            files = {EXPERTS[0]: entry} if isinstance(entry, str) else entry
            if not (isinstance(files, dict) and files and set(files) <= set(EXPERTS)):
                expected = f"expected a file or {{expert: file}} with experts {EXPERTS}"
                raise ValueError(f"{path}: adapter {name!r}: {expected}")
            adapters[str(name)] = {expert: str(file) for expert, file in files.items()}
        return cls(root, adapters)

    def resolve(self, name: str, experts: Collection[str] = EXPERTS) -> dict[str, Path]:
        """The adapter's file per expert, or a RequestError saying why it cannot load on a
        checkpoint with these experts."""
        check_adapter(self.adapters, name, experts)
        files = {}
        for expert, file in self.adapters[name].items():
            real = (self.root / file).resolve()  # follows symlinks; an absolute entry stays absolute
            if not real.is_relative_to(self.root):
                raise RequestError(FIELD, f"{name!r} resolves outside the adapter root; refused")
            if real.suffix != ".safetensors":
                raise RequestError(FIELD, f"{name!r} is a {real.suffix or 'suffix-less'} file; only .safetensors load")
            if not real.is_file():
                raise RequestError(FIELD, f"{name!r}: its file is missing on the server")
            files[expert] = real
        return files

    def problems(self, experts: Collection[str] = EXPERTS) -> dict[str, str]:
        """Entries that cannot load, with the reason: for the server's log at start."""
        found = {}
        for name in self.adapters:
            try:
                self.resolve(name, experts)
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
    """Adapters resident on a checkpoint's transformers (one, or Wan2.2 A14B's two experts), up
    to `capacity` names; `use` activates some for a call."""

    def __init__(self, experts: dict[str, torch.nn.Module], allow: AllowList, capacity: int = 4) -> None:
        self.experts, self.allow, self.capacity = experts, allow, capacity
        resident = (name for model in experts.values() for name in getattr(model, "peft_config", {}))
        self.loaded: OrderedDict[str, None] = OrderedDict.fromkeys(resident)

    def _holding(self, names: Sequence[str]) -> Iterator[tuple[torch.nn.Module, list[int]]]:
        """Each transformer that holds some of these adapters, with their positions in `names`."""
        for model in self.experts.values():
            held = [i for i, name in enumerate(names) if name in getattr(model, "peft_config", {})]
            if held:
                yield model, held

    def _load(self, name: str, keep: Sequence[str]) -> None:
        files = self.allow.resolve(name, self.experts)  # again at load: the file system may have changed
        while len(self.loaded) >= self.capacity:
            victim = next((n for n in self.loaded if n not in keep), None)
            if victim is None:
                raise RequestError(FIELD, f"{len(keep)} adapters at once; this server keeps at most {self.capacity}")
            for model, _ in self._holding([victim]):
                model.delete_adapters(victim)
            del self.loaded[victim]
        for expert, path in files.items():
            model = self.experts[expert]
            model.load_lora_adapter(state_dict(path, model), adapter_name=name, prefix="transformer")
        self.loaded[name] = None

    def _activate(self, names: Sequence[str], scales: Sequence[float]) -> list[tuple[torch.nn.Module, list[str]]]:
        """Loads what is missing; each expert that holds some of them gets those at their scales."""
        for name in names:
            if name not in self.loaded:
                self._load(name, names)
            self.loaded.move_to_end(name)
        active = []
        for model, held in self._holding(names):
            model.enable_lora()
            model.set_adapters([names[i] for i in held], [scales[i] for i in held])
            active.append((model, [names[i] for i in held]))
        return active

    def _disable(self) -> None:
        for model in self.experts.values():
            if getattr(model, "peft_config", None):
                model.disable_lora()

    @contextlib.contextmanager
    def use(self, names: Sequence[str], scales: Sequence[float]) -> Iterator[None]:
        """These adapters at these scales for the duration, each on the experts it loads into;
        none at all outside it, so a request without adapters runs the base weights exactly."""
        if not names:
            yield
            return
        self._disable()  # an expert none of these adapters touch runs its base weights
        try:
            self._activate(names, scales)
            yield
        finally:
            self._disable()

    def fuse(self, names: Sequence[str], scales: Sequence[float]) -> None:
        """A fixed adapter set merged into the weights (a dedicated deployment): no per-step cost,
        no switching; the adapters' layers are gone afterwards."""
        for model, held in self._activate(names, scales):
            model.fuse_lora(adapter_names=held)
            model.unload_lora()
        self.loaded.clear()
