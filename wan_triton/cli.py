"""`wan-triton`: the one command line. Heavy imports happen inside each subcommand."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence


def _tiny_checkpoint(args: argparse.Namespace) -> int:
    from wan_triton.checkpoints.tiny import build_checkpoint

    started = time.perf_counter()
    path = build_checkpoint(args.out, args.variant, args.size, args.seed)
    print(f"wrote {args.variant} ({args.size}, seed {args.seed}) to {path} in {time.perf_counter() - started:.1f} s")
    return 0


def _export(args: argparse.Namespace) -> int:
    from wan_triton.export import ExportError, export
    from wan_triton.export.to_tensorrt import TensorRTUnavailable

    try:
        export(args.checkpoint, args.repository, args.format, args.precision, args.parts.split(","), args.force)
    except (ExportError, TensorRTUnavailable, FileNotFoundError, ValueError) as exc:
        print(f"wan-triton export: {exc}", file=sys.stderr)
        return 2
    return 0


def _generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from wan_triton.contract import INPUTS, Geometry, RequestError, validate

    raw = {spec.name: getattr(args, spec.name) for spec in INPUTS if getattr(args, spec.name) is not None}
    try:
        request = validate(raw, Geometry.from_checkpoint(args.checkpoint))
    except RequestError as exc:
        print(f"wan-triton generate: {exc}", file=sys.stderr)
        return 2
    from wan_triton.pipeline import Pipeline

    started = time.perf_counter()
    video = Pipeline.from_checkpoint(args.checkpoint, args.onnx_repository).video(request)
    Path(args.output).write_bytes(video)
    print(f"wrote {args.output} ({len(video)} bytes, seed {request.seed}) in {time.perf_counter() - started:.1f} s")
    return 0


def add_contract_options(command: argparse.ArgumentParser) -> None:
    """One option per contract input, named and typed by the contract itself."""
    from wan_triton.contract import DEFAULTS, INPUTS

    kinds = {"BYTES": str, "INT32": int, "INT64": int, "FP32": float}
    command.add_argument("prompt", help="what the video shows")
    for spec in INPUTS[1:]:
        default = getattr(DEFAULTS, spec.name, None) if spec.name != "seed" else None
        hint = f"{spec.doc} (default: {default})" if default not in (None, "") else spec.doc
        command.add_argument(f"--{spec.name.replace('_', '-')}", dest=spec.name, type=kinds[spec.dtype], help=hint)


def parser() -> argparse.ArgumentParser:
    from wan_triton.checkpoints import SIZES, VARIANTS
    from wan_triton.repository import ONNX_FILES

    top = argparse.ArgumentParser(prog="wan-triton", description="Serve Wan video diffusion models on Triton.")
    commands = top.add_subparsers(dest="command", required=True)

    tiny = commands.add_parser("tiny-checkpoint", help="write a random Wan checkpoint in diffusers format")
    tiny.add_argument("--out", required=True, help="folder to write")
    tiny.add_argument("--variant", default="t2v-2.1", choices=sorted(VARIANTS))
    tiny.add_argument("--size", default="tiny", choices=sorted(SIZES))
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(run=_tiny_checkpoint)

    export = commands.add_parser("export", help="export the text encoder and VAE to ONNX / TensorRT, verified")
    export.add_argument("--checkpoint", required=True, help="diffusers-format Wan checkpoint folder")
    export.add_argument("--repository", default="model_repository", help="Triton model repository to fill")
    export.add_argument("--format", default="onnx", choices=("onnx", "tensorrt"))
    export.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    export.add_argument("--parts", default=",".join(ONNX_FILES), help="comma-separated subset of the parts")
    export.add_argument("--force", action="store_true", help="rebuild even if the manifest says current")
    export.set_defaults(run=_export)

    generate = commands.add_parser("generate", help="generate one video to an MP4 file")
    add_contract_options(generate)
    generate.add_argument("-o", "--output", required=True, help="MP4 file to write")
    generate.add_argument("--checkpoint", required=True, help="run in-process on this checkpoint folder")
    generate.add_argument("--onnx-repository", help="use the exported graphs in this model repository")
    generate.set_defaults(run=_generate)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
