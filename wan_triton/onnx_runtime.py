"""Run exported graphs with ONNX Runtime: sessions, and adapters to the stages' call shapes.

On a GPU a session gets explicit provider options (ONNX Runtime's defaults are sized for a process
that owns the GPU and sees one shape): the model instance's device, cuDNN's heuristic algorithm
choice (the default benchmarks every algorithm again for every new input shape, which every new
video size is), and an arena that grows by what is asked rather than doubling, optionally capped.
TensorRT runs only when asked (`serve --tensorrt`), from an engine cache, over the shape profiles
the export wrote into the manifest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from wan_triton.pipeline.text import EncodeFn
from wan_triton.pipeline.vae import ChunkFn

# Set by `serve --tensorrt`: the folder of TensorRT engine caches (one subfolder per graph).
TENSORRT_CACHE_ENV = "WAN_TRITON_TENSORRT_CACHE"
# Set by `serve --ort-gpu-memory`: bytes each session's CUDA arena may hold at most.
GPU_MEMORY_ENV = "WAN_TRITON_ORT_GPU_MEMORY"

Profile = dict[str, list[list[int]]]  # input name -> [min, opt, max] shapes (the manifest's "profile")
Provider = str | tuple[str, dict[str, str]]


class ProviderUnavailable(RuntimeError):
    pass


def device_id(device: str) -> int:
    return int(device.partition(":")[2] or 0)


def cuda_options(device: str) -> dict[str, str]:
    options = {
        "device_id": str(device_id(device)),
        "cudnn_conv_algo_search": "HEURISTIC",
        "arena_extend_strategy": "kSameAsRequested",
        "do_copy_in_default_stream": "1",
    }
    if os.environ.get(GPU_MEMORY_ENV):
        options["gpu_mem_limit"] = os.environ[GPU_MEMORY_ENV]
    return options


def _shapes(profile: Profile, which: int) -> str:
    return ",".join(f"{name}:{'x'.join(map(str, shapes[which]))}" for name, shapes in profile.items())


def tensorrt_options(device: str, cache: Path, profile: Profile | None) -> dict[str, str]:
    """fp32 engines only: UMT5 overflows in plain fp16 (docs/ARCHITECTURE.md), and the fp32 graphs are
    what the parity gate checked."""
    options = {
        "device_id": str(device_id(device)),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": "False",
    }
    if profile:
        for key, which in (("min", 0), ("opt", 1), ("max", 2)):
            options[f"trt_profile_{key}_shapes"] = _shapes(profile, which)
    return options


def providers(device: str = "cpu", graph: str = "", profile: Profile | None = None) -> list[Provider]:
    """The providers for a session on `device`, best first, each with its options. A GPU instance never
    falls back to the CPU quietly: an onnxruntime without the CUDA provider is an error."""
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise ProviderUnavailable(f"a GPU instance, but this onnxruntime offers {available} (install onnxruntime-gpu)")
    chosen: list[Provider] = []
    cache = os.environ.get(TENSORRT_CACHE_ENV)
    if cache:
        if "TensorrtExecutionProvider" not in available:
            raise ProviderUnavailable(f"serve --tensorrt, but this onnxruntime offers {available}")
        folder = Path(cache) / (graph or "graph")
        folder.mkdir(parents=True, exist_ok=True)
        chosen.append(("TensorrtExecutionProvider", tensorrt_options(device, folder, profile)))
    return [*chosen, ("CUDAExecutionProvider", cuda_options(device)), "CPUExecutionProvider"]


def graph_profile(path: Path) -> Profile | None:
    """The TensorRT shape profile the export recorded for the graph file `path` (manifest.json beside it)."""
    from wan_triton.repository import MANIFEST

    manifest = path.parent / MANIFEST
    if not manifest.is_file():
        return None
    graphs = json.loads(manifest.read_text()).get("graphs", {})
    return next((g.get("profile") for g in graphs.values() if g.get("file") == path.name), None)


def session(path: str | Path, device: str = "cpu", threads: int = 0) -> ort.InferenceSession:
    path = Path(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    graph = f"{path.parent.parent.name}-{path.stem}"  # <model>-<file>: one engine cache per graph
    chosen = providers(device, graph, graph_profile(path) if device.startswith("cuda") else None)
    return ort.InferenceSession(str(path), sess_options=options, providers=chosen)


def runner(sess: ort.InferenceSession) -> ChunkFn:
    """Positional numpy arrays in the graph's input order -> all outputs."""
    names = [i.name for i in sess.get_inputs()]

    def run(*arrays: np.ndarray) -> list[np.ndarray]:
        return sess.run(None, dict(zip(names, arrays, strict=True)))

    return run


def chunk_runners(folder: str | Path, model: str, device: str = "cpu") -> tuple[ChunkFn, ChunkFn]:
    """A VAE half's (first, step) chunk graphs in a model's version folder (wan_triton.pipeline.vae)."""
    from wan_triton.repository import ONNX_FILES

    files = ONNX_FILES[model]
    first, step = (runner(session(Path(folder) / files[key], device)) for key in ("first", "step"))
    return first, step


def encoder_fn(sess: ort.InferenceSession) -> EncodeFn:
    run = runner(sess)
    return lambda input_ids, attention_mask: run(input_ids, attention_mask)[0]
