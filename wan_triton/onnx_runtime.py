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
from pathlib import Path

import numpy as np
import onnxruntime as ort

from wan_triton.pipeline.text import EncodeFn
from wan_triton.pipeline.vae import ChunkFn
from wan_triton.serving.settings import ServeSettings

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
    memory = ServeSettings.current().ort_gpu_memory
    if memory:
        options["gpu_mem_limit"] = str(memory)
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
    cache = ServeSettings.current().tensorrt_cache
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


def _ort_device(device: str) -> tuple[str, int]:
    return ("cuda", device_id(device)) if device.startswith("cuda") else ("cpu", 0)


def _to_uint8_graph() -> bytes:
    """Decoder frames [1, 3, F, H, W] in [-1, 1] -> uint8 [1, F, H, W, 3]: diffusers' postprocess and
    numpy_to_pil's rounding (video.to_frames, video.to_uint8), op for op in float32."""
    from onnx import TensorProto, helper

    def constant(name: str, value: float):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.FLOAT, [], [value]))

    nodes = [
        constant("half", 0.5),
        constant("zero", 0.0),
        constant("one", 1.0),
        constant("levels", 255.0),
        helper.make_node("Mul", ["frames", "half"], ["scaled"]),
        helper.make_node("Add", ["scaled", "half"], ["shifted"]),
        helper.make_node("Clip", ["shifted", "zero", "one"], ["unit"]),
        helper.make_node("Mul", ["unit", "levels"], ["spread"]),
        helper.make_node("Round", ["spread"], ["rounded"]),
        helper.make_node("Cast", ["rounded"], ["bytes"], to=TensorProto.UINT8),
        helper.make_node("Transpose", ["bytes"], ["pixels"], perm=[0, 2, 3, 4, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "to_uint8",
        [helper.make_tensor_value_info("frames", TensorProto.FLOAT, [1, 3, "f", "h", "w"])],
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, [1, "f", "h", "w", 3])],
    )
    # IR version 8 is opset 18's: onnx's default is its own newest, which an older onnxruntime (the
    # image's 1.31) refuses ("Unsupported model IR version"; tests/test_image.py caught it).
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    return model.SerializeToString()


class DeviceChunks:
    """A VAE half's chunk graphs under I/O binding: the causal cache stays on the session's device from
    chunk to chunk as OrtValues (at 480x832 it is gigabytes a latent frame, which a numpy round trip
    would carry over PCIe twice per chunk). With `to_uint8`, the decoder's frames are converted there
    too, so only uint8 frames reach the host. Same chunking as pipeline.vae.run_chunks."""

    def __init__(self, first: ort.InferenceSession, step: ort.InferenceSession, device: str, to_uint8: bool) -> None:
        self.sessions, self.device = (first, step), _ort_device(device)
        self.post = None
        if to_uint8:
            chosen = providers(device, "to_uint8")
            self.post = ort.InferenceSession(_to_uint8_graph(), providers=chosen)

    def _run(self, sess: ort.InferenceSession, arrays: list) -> list:
        binding = sess.io_binding()
        for given, value in zip(sess.get_inputs(), arrays, strict=True):
            if isinstance(value, np.ndarray):
                value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), *self.device)
            binding.bind_ortvalue_input(given.name, value)
        for output in sess.get_outputs():
            binding.bind_output(output.name, *self.device)
        sess.run_with_iobinding(binding)
        return binding.get_outputs()

    def __call__(self, part, x: np.ndarray) -> np.ndarray:
        """The part's output over all of `x`."""
        return self.with_tail(part, x, 0)[0]

    def with_tail(self, part, x: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The output, and the last `keep` output frames as floats [1, 3, keep, H, W] (before any uint8
        conversion), copied off the device from the last chunks only."""
        from wan_triton.pipeline.vae import chunk_slices

        outputs, cache, floats = [], [], []
        chunks = chunk_slices(part, x.shape[2])
        for index, frames in enumerate(chunks):
            out, *cache = self._run(self.sessions[index > 0], [x[:, :, frames], *cache])
            if keep and index >= len(chunks) - 1 - keep:  # a chunk has at least one frame
                floats.append(out.numpy())
            if self.post is not None:
                (out,) = self._run(self.post, [out])
            outputs.append(out.numpy())
        result = np.concatenate(outputs, axis=2 if self.post is None else 1)
        return result, np.concatenate(floats, axis=2)[:, :, -keep:] if keep else None


def device_chunks(folder: str | Path, model: str, device: str = "cpu", to_uint8: bool = False) -> DeviceChunks:
    """A VAE half's chunk graphs in a model's version folder, cache on `device` (DeviceChunks)."""
    from wan_triton.repository import ONNX_FILES

    files = ONNX_FILES[model]
    first, step = (session(Path(folder) / files[key], device) for key in ("first", "step"))
    return DeviceChunks(first, step, device, to_uint8)


def encoder_fn(sess: ort.InferenceSession) -> EncodeFn:
    run = runner(sess)
    return lambda input_ids, attention_mask: run(input_ids, attention_mask)[0]
