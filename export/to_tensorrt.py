"""Build TensorRT engines from the exported ONNX graphs (needs a CUDA GPU and `tensorrt`).

Reduced precision is TensorRT's job here: the ONNX graphs stay fp32 and the builder runs fp16 or
bf16 kernels, with normalisation layers (and the reductions and powers inside RMS/LayerNorm) held
in fp32. UMT5 in plain fp16 overflows and returns zeros or NaN.
"""

from __future__ import annotations

from pathlib import Path


class TensorRTUnavailable(RuntimeError):
    pass


def require_gpu() -> None:
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("--format tensorrt needs a CUDA GPU; none is visible (use --format onnx here)")
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        raise TensorRTUnavailable("--format tensorrt needs the `tensorrt` package (pip install tensorrt)") from exc


def build_engine(onnx_path: Path, plan_path: Path, precision: str, profile: dict[str, tuple]) -> Path:
    """Build `plan_path` from `onnx_path`; `profile` maps each input to (min, opt, max) shapes."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if precision != "fp32":
        config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        keep_fp32 = {trt.LayerType.NORMALIZATION, trt.LayerType.REDUCE, trt.LayerType.SOFTMAX}
        for index in range(network.num_layers):
            layer = network.get_layer(index)
            is_pow = layer.type == trt.LayerType.ELEMENTWISE and "Pow" in layer.name
            if layer.type in keep_fp32 or is_pow:
                layer.precision = trt.float32
                for out in range(layer.num_outputs):
                    layer.set_output_type(out, trt.float32)
    optimization = builder.create_optimization_profile()
    for name, (low, opt, high) in profile.items():
        optimization.set_shape(name, low, opt, high)
    config.add_optimization_profile(optimization)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    plan_path.write_bytes(bytes(engine))
    return plan_path
