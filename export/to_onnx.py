"""Export one graph to ONNX, and measure how far ONNX Runtime lands from torch."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from wan_triton import onnx_runtime
from wan_triton.export.manifest import OPSET
from wan_triton.export.parts import Case, Exporter, Graph, Runners

PROTOBUF_LIMIT = 2**31 - 1  # a single .onnx file cannot hold more; weights then go beside it


def export_graph(graph: Graph, path: Path, exporter: Exporter) -> list[Path]:
    """Write `graph` to `path` (plus `path.data` past 2 GB); returns the files written."""
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp, torch.inference_mode(False), torch.no_grad():
        raw = Path(tmp) / path.name
        common = dict(input_names=graph.input_names, output_names=graph.output_names, opset_version=OPSET)
        if exporter == "torchscript":
            torch.onnx.export(
                graph.module,
                graph.inputs,
                str(raw),
                dynamo=False,
                dynamic_axes=graph.dynamic_axes,
                do_constant_folding=True,
                **common,
            )
        else:
            torch.onnx.export(
                graph.module,
                graph.inputs,
                str(raw),
                dynamo=True,
                dynamic_shapes=graph.dynamic_shapes,
                external_data=True,
                **common,
            )
        model = onnx.load(str(raw), load_external_data=True)
        external = model.ByteSize() > PROTOBUF_LIMIT
        data = path.with_name(path.name + ".data")
        data.unlink(missing_ok=True)
        onnx.save_model(
            model, str(path), save_as_external_data=external, all_tensors_to_one_file=True, location=data.name
        )
    return [path, data] if external else [path]


def signature(path: Path) -> dict:
    """Names, dtypes and shapes (symbolic axes by name) of a graph's inputs and outputs."""
    model = onnx.load(str(path), load_external_data=False)

    def describe(values) -> list[dict]:
        return [
            {
                "name": v.name,
                "dtype": onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type),
                "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            }
            for v in values
        ]

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def runners(paths: dict[str, Path]) -> Runners:
    return {key: onnx_runtime.runner(onnx_runtime.session(path)) for key, path in paths.items()}


def parity(cases: list[Case], run: Runners) -> list[dict]:
    """The exported graphs against torch, per fixed case: max abs error, the reference's scale (max abs,
    at least 1), their ratio (`error`, what the gate reads) and the cosine similarity."""
    results = []
    for case in cases:
        got = np.asarray(case.run(run), dtype=np.float64)
        reference = np.asarray(case.reference, dtype=np.float64)
        if got.shape != reference.shape:
            raise AssertionError(f"{case.label}: shape {got.shape} != torch {reference.shape}")
        error, scale = float(np.abs(got - reference).max()), max(1.0, float(np.abs(reference).max()))
        norms = float(np.linalg.norm(got) * np.linalg.norm(reference))
        cosine = float(np.dot(got.ravel(), reference.ravel()) / norms) if norms else 1.0
        results.append(
            {"case": case.label, "max_abs_error": error, "scale": scale, "error": error / scale, "cosine": cosine}
        )
    return results
