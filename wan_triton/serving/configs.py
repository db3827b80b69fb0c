"""Every model's `config.pbtxt`, rendered from the definitions in `models.py`.

`python -m wan_triton.serving.configs [REPOSITORY]` rewrites the checked-in configs (and the NGC
native-backend ones in docker/native_repository); a test regenerates them and fails on any difference.
Only `serve` and the tests import this module (it needs tritonclient's protobuf classes); the models
import `models.py`.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from wan_triton.admission import Served
from wan_triton.contract import Limits
from wan_triton.repository import (
    AUDIO_ENCODER,
    DENOISER,
    IMAGE_ENCODER,
    TEXT_ENCODER,
    TEXT_GRAPH_INPUTS,
    TEXT_GRAPH_OUTPUT,
    VAE_DECODER,
    VAE_ENCODER,
    VIDEO_ENCODER,
)
from wan_triton.serving.models import (
    BOUNDED_STAGES,
    ENTRIES,
    GEOMETRY_PREFIX,
    LIMIT_PREFIX,
    MODELS,
    SERVED_PARAMETER,
    STREAMING,
    VARIABLE,
    Model,
    Tensor,
)

# The class each model's `model.py` hands to the Python backend, as module.class under wan_triton.serving.
IMPLEMENTATIONS = {
    TEXT_ENCODER: "text_encoder.TextEncoderModel",
    DENOISER: "denoiser.DenoiserModel",
    VAE_DECODER: "vae.VaeDecoderModel",
    VAE_ENCODER: "vae.VaeEncoderModel",
    IMAGE_ENCODER: "image_encoder.ImageEncoderModel",
    AUDIO_ENCODER: "audio_encoder.AudioEncoderModel",
    VIDEO_ENCODER: "video_encoder.VideoEncoderModel",
    **{name: "entry.StreamEntryModel" if name in STREAMING else "entry.EntryModel" for name in ENTRIES},
}


def _dtype(name: str) -> int:
    return mc.DataType.Value("TYPE_STRING" if name == "BYTES" else f"TYPE_{name}")


def _tensor(message, tensor: Tensor) -> None:
    message.name, message.data_type = tensor.name, _dtype(tensor.dtype)
    message.dims.extend(tensor.dims)
    if tensor.optional:
        message.optional = True


# With denoiser batching on, how long the denoiser waits for compatible partners: little next
# to a job's seconds.
DENOISER_BATCH_DELAY_US = 50_000


def model_config(
    model: Model,
    gpu: bool = False,
    limits: Limits | None = None,
    denoiser_batch: int = 1,
    on_cpu: frozenset[str] = frozenset(),
    denoiser_gpus: tuple[int, ...] = (),
    served: Served | None = None,
) -> mc.ModelConfig:
    """`gpu`: heavy models get GPU instances, except those the memory plan puts `on_cpu` (wan_triton/plan.py).
    `denoiser_gpus`: in parallel mode, the first GPU of each rank set (an instance there is rank 0; its
    other ranks take the GPUs after it). `served`: what admission needs of the
    served checkpoint (admission.Served), written into the entries' (its geometry as parameters of their own)."""
    if model.name == DENOISER and denoiser_batch > 1:
        model = dataclasses.replace(model, max_batch_size=denoiser_batch, batch_delay_us=DENOISER_BATCH_DELAY_US)
    config = mc.ModelConfig(name=model.name, backend="python", max_batch_size=model.max_batch_size)
    for tensor in model.inputs:
        _tensor(config.input.add(), tensor)
    for tensor in model.outputs:
        _tensor(config.output.add(), tensor)
    on_gpu = gpu and model.heavy and model.name not in on_cpu
    kind = mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU
    group = config.instance_group.add(count=model.instances, kind=kind)
    if on_gpu and model.name == DENOISER and denoiser_gpus:
        group.gpus.extend(denoiser_gpus)
    batching = config.dynamic_batching
    batching.max_queue_delay_microseconds = model.batch_delay_us
    batching.default_queue_policy.max_queue_size = model.max_queue_size
    if model.decoupled:
        config.model_transaction_policy.decoupled = True
    limits = limits or Limits()
    if model.name in ENTRIES:
        batching.default_queue_policy.max_queue_size = limits.max_queue_size
    if model.name in ENTRIES or model.name in BOUNDED_STAGES:
        for key, value in vars(limits).items():
            config.parameters[f"{LIMIT_PREFIX}{key}"].string_value = str(value)
    if model.name in ENTRIES and served is not None:
        for key, value in vars(served.geometry).items():
            if value is not None:
                config.parameters[f"{GEOMETRY_PREFIX}{key}"].string_value = str(value)
        config.parameters[SERVED_PARAMETER].string_value = served.to_json()
    return config


def all_configs(
    gpu: bool = False,
    limits: Limits | None = None,
    denoiser_batch: int = 1,
    on_cpu: frozenset[str] = frozenset(),
    denoiser_gpus: tuple[int, ...] = (),
    served: Served | None = None,
) -> dict[str, mc.ModelConfig]:
    return {
        name: model_config(model, gpu, limits, denoiser_batch, on_cpu, denoiser_gpus, served)
        for name, model in MODELS.items()
    }


def native_configs() -> dict[str, mc.ModelConfig]:
    """The exported text encoder on NGC's own ONNX Runtime backend with its TensorRT accelerator, for the
    NGC container; same batching and queue as the Python model. fp32 engines: UMT5 overflows in plain
    fp16 (docs/ARCHITECTURE.md)."""
    stage = MODELS[TEXT_ENCODER]
    config = mc.ModelConfig(name="text_encoder_onnx", platform="onnxruntime_onnx", max_batch_size=stage.max_batch_size)
    for graph_input in TEXT_GRAPH_INPUTS:
        _tensor(config.input.add(), Tensor(graph_input, "INT64", (VARIABLE,)))
    _tensor(config.output.add(), Tensor(TEXT_GRAPH_OUTPUT, "FP32", (VARIABLE, VARIABLE)))
    config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_GPU)
    config.dynamic_batching.max_queue_delay_microseconds = stage.batch_delay_us
    config.dynamic_batching.default_queue_policy.max_queue_size = stage.max_queue_size
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    accelerator.parameters["precision_mode"] = "FP32"
    return {config.name: config}


def render(config: mc.ModelConfig) -> str:
    header = "# Generated by `python -m wan_triton.serving.configs` from wan_triton/serving/configs.py.\n"
    return header + text_format.MessageToString(config)


def model_file(name: str) -> str:
    """A model's `1/model.py`: one import; the model itself lives in the package."""
    module, cls = IMPLEMENTATIONS[name].split(".")
    return (
        f'"""Triton Python-backend entry point; the model lives in wan_triton.serving.{module}."""\n\n'
        f"from wan_triton.serving.{module} import {cls} as TritonPythonModel\n\n"
        '__all__ = ["TritonPythonModel"]\n'
    )


def write(
    repository: str | Path,
    gpu: bool = False,
    native: bool = False,
    limits: Limits | None = None,
    denoiser_batch: int = 1,
    on_cpu: frozenset[str] = frozenset(),
    denoiser_gpus: tuple[int, ...] = (),
    served: Served | None = None,
) -> list[Path]:
    """Every model's config.pbtxt, and for the Python models their model.py: a complete repository from
    nothing but the package (exports go beside, from `wan-triton export`)."""
    written = []
    configs = native_configs() if native else all_configs(gpu, limits, denoiser_batch, on_cpu, denoiser_gpus, served)
    for name, config in configs.items():
        path = Path(repository) / name / "config.pbtxt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(config))
        written.append(path)
        if name in IMPLEMENTATIONS:
            code = path.parent / "1" / "model.py"
            code.parent.mkdir(exist_ok=True)
            if not code.is_file() or code.read_text() != model_file(name):
                code.write_text(model_file(name))
            written.append(code)
    return written


NATIVE_REPOSITORY = "docker/native_repository"

if __name__ == "__main__":
    for written in write(sys.argv[1] if len(sys.argv) > 1 else "model_repository"):
        print(written)
    for written in write(NATIVE_REPOSITORY, native=True):
        print(written)
