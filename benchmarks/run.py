"""`wan-triton bench`: every benchmark on the bench checkpoint, saved as JSON, rendered into
docs/PERFORMANCE.md. Sections: inprocess, served, perf_analyzer (all by default)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import time
from pathlib import Path

from wan_triton.contract import GenerationRequest

SECTIONS = ("inprocess", "speed", "served", "perf_analyzer")
# perf_analyzer needs several measurement windows per level: a lighter request keeps it minutes.
PERF_OPTIONS = {"height": 64, "width": 64, "num_frames": 9, "num_inference_steps": 4}
# The bench checkpoint at a size where the denoiser dominates but a run takes seconds on a CPU.
REQUEST = GenerationRequest(
    prompt="a red cat walking in the snow",
    negative_prompt="blurry, low quality",
    height=128,
    width=128,
    num_frames=17,
    num_inference_steps=8,
    seed=1,
)


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return f"{cpu}, {os.cpu_count()} cores"


def run_inprocess(checkpoint: Path, repository: Path, request: GenerationRequest, folder: Path) -> dict:
    from wan_triton.benchmarks import inprocess
    from wan_triton.pipeline import Pipeline
    from wan_triton.video import to_uint8

    torch_pipe = Pipeline.from_checkpoint(checkpoint)
    onnx_pipe = Pipeline.from_checkpoint(checkpoint, repository)
    frames = to_uint8(onnx_pipe.frames(request))
    return {
        "export_payoff": inprocess.export_payoff(torch_pipe, onnx_pipe, request),
        "encode": inprocess.encoders(frames, request.fps, folder),
        "guidance": inprocess.guidance(onnx_pipe, request),
        "efficiency": inprocess.efficiency(onnx_pipe, request),
        "step_cache": inprocess.step_cache(onnx_pipe, request),
        "lora": inprocess.lora(checkpoint, request, folder),
    }


def run_speed(bench_checkpoint: Path, bench_repository: Path, work: Path) -> dict:
    """Every speed option against the exact output: on the committed trained checkpoint (it really denoises,
    so its quality columns mean something), and on the bench-size one (the bench's FLOPs; its random
    weights make the quality columns a floor: see speed_options.py). Our side runs the served stages (the
    exported text encoder and VAE on ONNX Runtime)."""
    from wan_triton.benchmarks.speed_options import SPEED_REQUEST, measure
    from wan_triton.checkpoints.train import TRAINED
    from wan_triton.export import export

    trained_repository = work / "trained-repository"
    export(TRAINED, trained_repository, verify=False)  # once: later runs find the manifests current
    request = dataclasses.replace(SPEED_REQUEST, height=REQUEST.height, width=REQUEST.width)
    return {
        "trained": measure(TRAINED, SPEED_REQUEST, repeats=5, repository=trained_repository),  # cheap: more runs
        "bench": measure(bench_checkpoint, request, repeats=2, repository=bench_repository),
    }


def run_served(url: str, checkpoint: Path, request: GenerationRequest, repeats: int) -> dict:
    from wan_triton.benchmarks import served

    return {
        "overhead": served.overhead(url, checkpoint, request, repeats),
        "steps": served.steps(url, request),
        "scaling": served.scaling(url, request),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, help="default: the bench-size random checkpoint (built once)")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"), help="the repository to copy")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of %(default)s")
    parser.add_argument("--repeats", type=int, default=5, help="alternating runs for the serving overhead")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/latest.json"))
    parser.add_argument("--doc", type=Path, default=Path("docs/PERFORMANCE.md"))


def settings(request: GenerationRequest) -> dict:
    """A request's settings for the results JSON: without the prompts and the set of given inputs."""
    return {k: v for k, v in vars(request).items() if k not in ("prompt", "negative_prompt", "given")}


def bench(args: argparse.Namespace) -> int:
    from wan_triton.benchmarks import perf_analyzer, served
    from wan_triton.benchmarks.report import render
    from wan_triton.checkpoints import build_checkpoint
    from wan_triton.serving.server import BACKEND_CACHE, TritonServer, prepare
    from wan_triton.serving.settings import ServeSettings

    sections = set(args.sections.split(","))
    work = BACKEND_CACHE / "bench"
    checkpoint = args.checkpoint or work / "bench-t2v"
    if not (checkpoint / "model_index.json").is_file():
        build_checkpoint(checkpoint, size="bench")
    repository = work / "model_repository"
    shutil.copytree(args.repository, repository, dirs_exist_ok=True)  # keeps earlier exports
    checkpoint = prepare(repository, checkpoint)
    # A subset of sections updates the last results instead of replacing them.
    earlier = json.loads(args.results.read_text()) if args.results.is_file() and sections != set(SECTIONS) else {}
    results: dict = {
        **{k: v for k, v in earlier.items() if k != "errors"},
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "checkpoint": "given" if args.checkpoint else "bench size, random",
        "request": settings(REQUEST),
        "results_file": str(args.results),
        "perf_options": PERF_OPTIONS,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)

    def section(name: str, run) -> None:
        """Run one section; a failure is recorded and the others still run. Saved after each."""
        started = time.perf_counter()
        try:
            results.update(run())
        except Exception as exc:
            results.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"[:600]
        results.setdefault("seconds", {})[name] = round(time.perf_counter() - started, 1)
        args.results.write_text(json.dumps(results, indent=1))

    if "inprocess" in sections:
        section("inprocess", lambda: run_inprocess(checkpoint, repository, REQUEST, work))
    if "speed" in sections:
        section("speed", lambda: {"speed_options": run_speed(checkpoint, repository, work)})
    served_settings = ServeSettings(checkpoint=checkpoint)
    if sections & {"served", "perf_analyzer"}:
        with TritonServer(repository, settings=served_settings, log=work / "triton.log") as server:
            url = server.grpc_url
            if "served" in sections:
                section("served", lambda: run_served(url, checkpoint, REQUEST, args.repeats))
                section("denoiser_batch_1", lambda: {"denoiser_batching": {"1": served.throughput(url, REQUEST)}})
            if "perf_analyzer" in sections:
                binary = perf_analyzer.install(work / "perf_analyzer")
                section("perf_analyzer", lambda: {"perf_analyzer": perf_analyzer.measure(binary, url, PERF_OPTIONS)})
    if "served" in sections:  # the same, the denoiser batching up to 4 compatible requests
        prepare(repository, checkpoint, denoiser_batch=4)
        with TritonServer(repository, settings=served_settings, log=work / "triton-batch.log") as server:
            url = server.grpc_url
            section(
                "denoiser_batch_4",
                lambda: {
                    "denoiser_batching": {**results.get("denoiser_batching", {}), "4": served.throughput(url, REQUEST)}
                },
            )
        prepare(repository, checkpoint)
    print(f"wrote {args.results} and {render(results, args.doc)}")
    return 1 if results.get("errors") else 0
