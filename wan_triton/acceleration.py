"""Deployment-wide speed options for the transformer: `serve --compile`, `serve --quantize`.

- compile: torch.compile of the repeated transformer blocks only (regional compilation, diffusers'
  `compile_repeated_blocks`): one compiled block serves all of them, so the warm-up paid at load is
  seconds, not minutes. Shapes are dynamic from the start: one graph serves every size, frame count
  and guidance batch, and no request pays a recompile.
- quantize (torchao), the linear layers of the blocks:
  - `int8`: int8 weights, and activations quantized per token at run time (W8A8,
    `Int8DynamicActivationInt8WeightConfig`): the fastest. Its rounding of activations amplifies tiny
    input differences over the steps (measured on the trained checkpoint: 34 dB from the exact video
    with torch's text encoder, 24 dB with the exported one, whose embeddings differ by ~1e-6);
  - `int8-weights`: int8 weights only (`Int8WeightOnlyConfig`): half of bf16's weight memory, close
    to exact, less fast;
  - `fp8`: float8 e4m3 weights and activations (`Float8DynamicActivationFloat8WeightConfig`), for
    GPUs that have it (compute capability 8.9+).
  All imply compile: torchao's quantized layers run as tensor subclasses, 1.1 to 11 times slower
  than float32 uncompiled on this CPU (measured), and fast only once compiled.

A compiled transformer refuses per-request step caches (their hooks replace the blocks' forward
per request, which a compiled block would recompile for, request after request) and runs without the
text cache (pipeline/text_cache.py; its hooks sit inside the compiled blocks).
"""

from __future__ import annotations

from dataclasses import dataclass

QUANTIZE = ("int8", "int8-weights", "fp8")


class AccelerationError(ValueError):
    """A setting that cannot work here; the message names the flag and what is allowed."""


@dataclass(frozen=True)
class Acceleration:
    compile: bool = False
    quantize: str | None = None

    @classmethod
    def parse(cls, text: str | None) -> Acceleration:
        """The environment's form, `compile` and/or `quantize=int8`, comma-separated; empty: none."""
        compile_, quantize = False, None
        for part in (text or "").replace(" ", "").split(","):
            name, _, value = part.partition("=")
            if name == "compile" and not value:
                compile_ = True
            elif name == "quantize" and value in QUANTIZE:
                quantize = value
            elif part:
                allowed = f"compile, quantize={'|'.join(QUANTIZE)}"
                raise AccelerationError(f"unknown transformer option {part!r}; allowed: {allowed}")
        return cls(compile_, quantize)

    def __str__(self) -> str:
        parts = ["compile"] if self.compile else []
        return ",".join([*parts, *([f"quantize={self.quantize}"] if self.quantize else [])])

    @property
    def compiled(self) -> bool:
        return self.compile or self.quantize is not None

    def check(self, parallel, loras: bool) -> None:
        """Before anything starts: what `serve` cannot combine with a compiled transformer, and what
        this machine cannot run. Adapters switched per request and parallel ranks' hooks would change
        the compiled blocks under their guards (unmeasured together: refused rather than guessed)."""
        if not self.compiled:
            return
        flag = "--quantize" if self.quantize else "--compile"
        if loras:
            raise AccelerationError(f"{flag} does not combine with --loras (adapters switch per request)")
        if parallel.world > 1:
            raise AccelerationError(f"{flag} does not combine with --parallel")
        if self.quantize == "fp8":
            import torch

            if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
                raise AccelerationError(
                    "--quantize fp8 needs a GPU with float8 (compute capability 8.9+); int8 runs anywhere"
                )

    def apply(self, denoiser) -> None:
        """Quantize, then compile, every transformer of `denoiser` (pipeline.denoise.Denoiser), in place."""
        if not self.compiled:
            return
        for model in denoiser.transformers():
            if self.quantize:
                _quantize(model, self.quantize)
            model.compile_repeated_blocks(fullgraph=True, dynamic=True)
        denoiser.cache_text = False

    def check_request(self, cache_method: str) -> None:
        """Refused by the entry before any stage, and by the denoiser again."""
        if self.compiled and cache_method != "none":
            from wan_triton.contract import RequestError

            raise RequestError(
                "cache_method",
                f"step caching is not supported with a compiled transformer (serve: {self}); allowed: none",
            )


def _quantize(model, kind: str) -> None:
    from torch.nn import Linear
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        quantize_,
    )

    config = {
        "int8": Int8DynamicActivationInt8WeightConfig,
        "int8-weights": Int8WeightOnlyConfig,
        "fp8": Float8DynamicActivationFloat8WeightConfig,
    }[kind]()
    # The blocks' linear layers only: the embeddings and the output projection are small, and keep
    # their precision (diffusers' and torchao's own recipes for DiTs do the same).
    quantize_(model, config, filter_fn=lambda module, name: isinstance(module, Linear) and name.startswith("blocks."))
