"""What `serve` decides for the models it starts, as one object: checked once, before anything is built
(every combination it refuses is named in `check`), handed to tritonserver's environment once
(`to_environment`), and read back by every stub the same way (`from_environment`). The environment is
only the carrier: tritonserver starts the Python-backend stubs, and passes them nothing else.

The checkpoint, the stage key and the run folder travel apart (serving/glue.py, serving/cancel.py): a
deployment that runs tritonserver itself sets them (deploy/).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from wan_triton.acceleration import Acceleration
from wan_triton.contract import CheckpointError, Family
from wan_triton.parallel import Parallel

PARALLEL_ENV = "WAN_TRITON_PARALLEL"  # serve --parallel
ACCELERATION_ENV = "WAN_TRITON_ACCELERATION"  # serve --compile, --quantize
GGUF_ENV = "WAN_TRITON_GGUF"  # serve --gguf: expert=path, comma-separated
LORAS_ENV = "WAN_TRITON_LORAS"  # serve --loras: the allow-list file
LORA_CACHE_ENV = "WAN_TRITON_LORA_CACHE"  # serve --lora-cache
FUSE_LORAS_ENV = "WAN_TRITON_FUSE_LORAS"  # serve --fuse-lora
TENSORRT_CACHE_ENV = "WAN_TRITON_TENSORRT_CACHE"  # serve --tensorrt: where the engines are kept
ORT_GPU_MEMORY_ENV = "WAN_TRITON_ORT_GPU_MEMORY"  # serve --ort-gpu-memory: ONNX Runtime's CUDA arena, bytes
ENVIRONMENT = (
    PARALLEL_ENV,
    ACCELERATION_ENV,
    GGUF_ENV,
    LORAS_ENV,
    LORA_CACHE_ENV,
    FUSE_LORAS_ENV,
    TENSORRT_CACHE_ENV,
    ORT_GPU_MEMORY_ENV,
)


class SettingsError(ValueError):
    """A combination `serve` cannot run; the message names the flags."""


@dataclass(frozen=True)
class ServeSettings:
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

    def to_environment(self) -> dict[str, str]:
        """What differs from the defaults, in tritonserver's environment."""
        values = {
            PARALLEL_ENV: str(self.parallel) if self.parallel.world > 1 else "",
            ACCELERATION_ENV: str(self.acceleration),
            GGUF_ENV: ",".join(f"{expert}={path}" for expert, path in self.gguf.items()),
            LORAS_ENV: str(self.loras.resolve()) if self.loras else "",
            LORA_CACHE_ENV: str(self.lora_cache) if self.loras else "",
            FUSE_LORAS_ENV: self.fuse_loras or "",
            TENSORRT_CACHE_ENV: str(self.tensorrt_cache) if self.tensorrt_cache else "",
            ORT_GPU_MEMORY_ENV: str(self.ort_gpu_memory) if self.ort_gpu_memory else "",
        }
        return {name: value for name, value in values.items() if value}

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ServeSettings:
        """The settings a stub was started with (the defaults outside `serve`)."""
        env = os.environ if environ is None else environ
        gguf: dict[str, Path] = {}
        for part in filter(None, env.get(GGUF_ENV, "").split(",")):
            expert, _, path = part.partition("=")
            gguf[expert] = Path(path)
        return cls(
            parallel=Parallel.parse(env.get(PARALLEL_ENV) or None),
            acceleration=Acceleration.parse(env.get(ACCELERATION_ENV) or None),
            gguf=gguf,
            loras=Path(env[LORAS_ENV]) if env.get(LORAS_ENV) else None,
            lora_cache=int(env.get(LORA_CACHE_ENV) or 4),
            fuse_loras=env.get(FUSE_LORAS_ENV) or None,
            tensorrt_cache=Path(env[TENSORRT_CACHE_ENV]) if env.get(TENSORRT_CACHE_ENV) else None,
            ort_gpu_memory=int(env[ORT_GPU_MEMORY_ENV]) if env.get(ORT_GPU_MEMORY_ENV) else None,
        )

    def allow_list(self):
        """The adapters' allow-list (lora.AllowList), or None."""
        from wan_triton.lora import AllowList

        return None if self.loras is None else AllowList.from_file(self.loras)
