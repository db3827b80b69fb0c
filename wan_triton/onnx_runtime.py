"""Run exported graphs with ONNX Runtime: sessions, and adapters to the stages' call shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from wan_triton.pipeline.text import EncodeFn
from wan_triton.pipeline.vae import ChunkFn

# Best first; ONNX Runtime keeps the ones this build and machine offer.
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def providers(device: str = "cpu") -> list[str]:
    available = ort.get_available_providers()
    wanted = [p for p in GPU_PROVIDERS if p in available] if device.startswith("cuda") else []
    return [*wanted, "CPUExecutionProvider"]


def session(path: str | Path, device: str = "cpu", threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=providers(device))


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
