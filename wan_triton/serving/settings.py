"""What `serve` decides for the models it starts, as one object: checked once, before anything is built
(every combination it refuses is named in `check`), written once into the server's run folder
(`write`), and read back from there by every stub and rank worker (`current`).

Tritonserver passes its stubs nothing but its environment, so one variable carries the run folder
(RUN_DIR_ENV); the file in it carries the rest. A launcher other than `serve` (Model Analyzer starting
tritonserver itself, deploy/model_analyzer) has no run folder: it sets the checkpoint and the stage key
as variables (CHECKPOINT_ENV, STAGE_KEY_ENV), and every other setting is its default.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from wan_triton.acceleration import Acceleration
from wan_triton.contract import CheckpointError, Family
from wan_triton.parallel import Parallel

# `serve` gives each server its own run folder (TritonServer.run_dir): this file, and its jobs' flags
# (serving/cancel.py). Without one, the flags share one folder.
RUN_DIR_ENV = "WAN_TRITON_RUN_DIR"
SHARED_ROOT = Path("/dev/shm" if Path("/dev/shm").is_dir() else tempfile.gettempdir())
RUN_DIR = Path(os.environ.get(RUN_DIR_ENV, SHARED_ROOT))
SETTINGS_FILE = "settings.json"
CHECKPOINT_ENV = "WAN_TRITON_CHECKPOINT"  # without a run folder only
# The secret the entries send with every stage call (models.STAGE_KEY) and the stages check: a
# client on the port can call any loaded model, and the stages trust their inputs (R27). `serve`
# draws one per server (TritonServer); it is kept in the run folder's file (mode 0600) only.
STAGE_KEY_ENV = "WAN_TRITON_STAGE_KEY"  # without a run folder only


class SettingsError(ValueError):
    """A combination `serve` cannot run; the message names the flags."""


@dataclass(frozen=True)
class ServeSettings:
    checkpoint: Path | None = None
    stage_key: str = field(default="", repr=False)
    parallel: Parallel = field(default_factory=Parallel)
    acceleration: Acceleration = field(default_factory=Acceleration)
    gguf: Mapping[str, Path] = field(default_factory=dict)  # expert -> GGUF file
    loras: Path | None = None  # the adapters' allow-list
    lora_cache: int = 4  # adapters resident at once
    fuse_loras: str | None = None  # NAME:SCALE,...: merged into the weights at load
    tensorrt_cache: Path | None = None
    ort_gpu_memory: int | None = None

    def check(self, family: Family) -> None:
        """Every combination refused, before anything is built (AccelerationError, CheckpointError or
        SettingsError, naming the flags)."""
        self.acceleration.check(self.parallel, self.loras is not None)
        given = {
            "parallel": self.parallel.world > 1,
            "compile": self.acceleration.compile,
            "quantize": self.acceleration.quantize is not None,
            "loras": self.loras is not None,
            "gguf": bool(self.gguf),
        }
        if family.s2v and any(given.values()):  # its own transformer, not diffusers'
            options = ", --".join(name for name, on in given.items() if on)
            raise CheckpointError(f"Wan2.2-S2V is served without --{options} (not supported yet)")
        if self.gguf and (self.acceleration.compiled or self.loras is not None or self.parallel.world > 1):
            raise SettingsError("--gguf does not combine with --compile, --quantize, --loras or --parallel")
        if self.fuse_loras and self.loras is None:
            raise SettingsError("--fuse-lora needs --loras (the adapters it names come from the allow-list)")
        if self.lora_cache < 1:
            raise SettingsError(f"--lora-cache is {self.lora_cache}; at least 1")
        unknown = set(self.gguf) - set(family.experts)
        if unknown:
            raise SettingsError(f"--gguf for {', '.join(sorted(unknown))}, which this checkpoint does not have")

    def to_json(self) -> dict:
        return {
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "stage_key": self.stage_key,
            "parallel": asdict(self.parallel),
            "acceleration": asdict(self.acceleration),
            "gguf": {expert: str(path) for expert, path in self.gguf.items()},
            "loras": str(self.loras.resolve()) if self.loras else None,
            "lora_cache": self.lora_cache,
            "fuse_loras": self.fuse_loras,
            "tensorrt_cache": str(self.tensorrt_cache) if self.tensorrt_cache else None,
            "ort_gpu_memory": self.ort_gpu_memory,
        }

    @classmethod
    def from_json(cls, data: Mapping) -> ServeSettings:
        def path(key: str) -> Path | None:
            return Path(data[key]) if data.get(key) else None

        return cls(
            checkpoint=path("checkpoint"),
            stage_key=data.get("stage_key", ""),
            parallel=Parallel(**data.get("parallel", {})),
            acceleration=Acceleration(**data.get("acceleration", {})),
            gguf={expert: Path(file) for expert, file in data.get("gguf", {}).items()},
            loras=path("loras"),
            lora_cache=data.get("lora_cache", 4),
            fuse_loras=data.get("fuse_loras"),
            tensorrt_cache=path("tensorrt_cache"),
            ort_gpu_memory=data.get("ort_gpu_memory"),
        )

    def write(self, run_dir: Path) -> Path:
        """Into a server's run folder, readable by its owner only (it holds the stage key)."""
        path = Path(run_dir) / SETTINGS_FILE
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            json.dump(self.to_json(), out, indent=2)
        return path

    @classmethod
    def read(cls, run_dir: Path) -> ServeSettings:
        return cls.from_json(json.loads((Path(run_dir) / SETTINGS_FILE).read_text()))

    @staticmethod
    @functools.cache
    def current() -> ServeSettings:
        """What this process was started with: its server's run folder's file; without one (a launcher
        other than `serve`, or no server at all), the checkpoint and the stage key from the environment."""
        if os.environ.get(RUN_DIR_ENV) and (RUN_DIR / SETTINGS_FILE).is_file():
            return ServeSettings.read(RUN_DIR)
        checkpoint, key = os.environ.get(CHECKPOINT_ENV), os.environ.get(STAGE_KEY_ENV, "")
        return ServeSettings(checkpoint=Path(checkpoint) if checkpoint else None, stage_key=key)

    def allow_list(self):
        """The adapters' allow-list (lora.AllowList), or None."""
        from wan_triton.lora import AllowList

        return None if self.loras is None else AllowList.from_file(self.loras)
