"""The GPU check: seconds per denoising step and VAE decode on a Wan2.1-1.3B-shaped checkpoint.

    bash benchmarks/gpu_check.sh            # on a CUDA GPU: bf16, 480x832, 81 frames (< 8 min on an H200)
    bash benchmarks/gpu_check.sh --cpu      # the reduced mode CI runs: tiny checkpoint, fp32, CPU

Reports, as JSON: seconds per step for diffusers' WanPipeline (two transformer forwards a step)
vs our Denoiser (guidance batched into one forward), as is, with `serve --compile` and with
`serve --quantize fp8` (warm-up times apart); VAE decode
in torch vs ONNX Runtime (CUDA / TensorRT execution providers where installed); and model FLOPs
utilisation (one step's counted FLOPs over its time, against a measured matmul and, on a GPU, the
card's spec sheet). Anything the machine lacks is reported as skipped with the reason, never silently left out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch

from wan_triton.benchmarks.timing import timed
from wan_triton.contract import GenerationRequest

GPU_REQUEST = GenerationRequest(prompt="a red cat", height=480, width=832, num_frames=81, num_inference_steps=4, seed=1)
CPU_REQUEST = GenerationRequest(prompt="a red cat", height=32, width=48, num_frames=9, num_inference_steps=3, seed=1)
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}  # dense, spec sheets


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def per_step(run, device: str) -> float:
    """Seconds per step of `run(callback)`, from the gaps between step callbacks."""
    stamps: list[float] = []

    def mark(*_args, **_kwargs):
        sync(device)
        stamps.append(time.perf_counter())
        return _kwargs.get("callback_kwargs", {})

    run(mark)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return round(statistics.median(gaps), 4) if gaps else float("nan")


def denoising(checkpoint: Path, request: GenerationRequest, device: str, dtype, compile_: bool) -> dict:
    from diffusers import WanPipeline

    from wan_triton.acceleration import Acceleration
    from wan_triton.contract import Geometry
    from wan_triton.pipeline.checkpoint import Checkpoint
    from wan_triton.pipeline.denoise import Denoiser
    from wan_triton.pipeline.latents import initial_latents, latent_shape

    steps = request.num_inference_steps + 1  # the first gap is warm-up-free; callbacks bound each step
    text_dim = Checkpoint.open(checkpoint).config("transformer")["text_dim"]
    embeds = torch.randn(1, 512, text_dim, dtype=dtype, device=device)
    rows: dict = {}

    def diffusers_loop(callback) -> None:
        pipe = WanPipeline.from_pretrained(checkpoint, torch_dtype=dtype).to(device)
        pipe(
            prompt_embeds=embeds,
            negative_prompt_embeds=embeds,
            height=request.height,
            width=request.width,
            num_frames=request.num_frames,
            guidance_scale=5.0,
            num_inference_steps=steps,
            output_type="latent",
            callback_on_step_end=callback,
        )

    rows["diffusers_s_per_step"] = per_step(diffusers_loop, device)
    denoiser = Denoiser.from_checkpoint(Checkpoint.open(checkpoint), dtype, device)
    shape = latent_shape(request.height, request.width, request.num_frames, 16, Geometry.from_checkpoint(checkpoint))
    latents = initial_latents(1, shape, device)

    def ours(callback) -> None:
        denoiser(latents, embeds, embeds, steps, 5.0, callback=callback)

    rows["ours_s_per_step"] = per_step(ours, device)
    rows["diffusers_over_ours"] = round(rows["diffusers_s_per_step"] / rows["ours_s_per_step"], 3)
    rows["mfu"] = utilisation(denoiser.transformer, latents, embeds, rows["ours_s_per_step"], device, dtype)
    if compile_:  # serve --compile, then serve --quantize fp8 (compiled too), each on fresh weights
        for option in (Acceleration(compile=True), Acceleration(quantize="fp8")):
            name = str(option).replace("quantize=", "")
            try:
                denoiser = Denoiser.from_checkpoint(Checkpoint.open(checkpoint), dtype, device)
                started = time.perf_counter()
                option.apply(denoiser)
                ours(None)  # compiles
                rows[f"{name}_warm_up_s"] = round(time.perf_counter() - started, 1)
                rows[f"ours_{name}_s_per_step"] = per_step(ours, device)
                rows[f"{name}_speedup"] = round(rows["ours_s_per_step"] / rows[f"ours_{name}_s_per_step"], 3)
            except Exception as exc:  # reported, not hidden
                rows[name] = f"skipped: {type(exc).__name__}: {exc}"[:300]
    return rows


def utilisation(model, latents, embeds, seconds: float, device: str, dtype) -> dict:
    """Counted FLOPs of one batched-guidance forward over the measured step time."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(
            hidden_states=torch.cat([latents, latents]).to(dtype),
            timestep=torch.tensor([500.0, 500.0], device=device),
            encoder_hidden_states=torch.cat([embeds, embeds]),
            return_dict=False,
        )
    achieved = counter.get_total_flops() / seconds
    size = 8192 if device.startswith("cuda") else 1024
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))

    def matmul() -> None:
        a @ b
        sync(device)

    peak = 2 * size**3 / (timed(matmul, repeats=10)["median_ms"] / 1e3)
    row = {
        "step_tflop": round(counter.get_total_flops() / 1e12, 3),
        "achieved_tflops": round(achieved / 1e12, 3),
        "matmul_tflops": round(peak / 1e12, 3),
        "of_matmul": round(achieved / peak, 3),
    }
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        spec = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
        row["device"] = name
        if spec:
            row["of_spec_bf16"] = round(achieved / 1e12 / spec, 3)
    return row


def vae_decode(checkpoint: Path, repository: Path | None, request: GenerationRequest, device: str) -> dict:
    from wan_triton import onnx_runtime as rt
    from wan_triton.contract import Geometry
    from wan_triton.pipeline.checkpoint import Checkpoint
    from wan_triton.pipeline.latents import initial_latents, latent_shape
    from wan_triton.pipeline.vae import chunked_decode, torch_decode
    from wan_triton.repository import ONNX_FILES, VAE_DECODER, version_dir

    opened = Checkpoint.open(checkpoint)
    shape = latent_shape(request.height, request.width, request.num_frames, 16, Geometry.from_checkpoint(checkpoint))
    latents = initial_latents(2, shape, "cpu").numpy()
    vae = opened.vae(torch.float32, device)
    rows: dict = {"torch": timed(lambda: (torch_decode(vae, latents), sync(device)), repeats=2)}
    if repository is None:
        from wan_triton.export import export

        repository = checkpoint.parent / "repository"
        export(checkpoint, repository, parts=[VAE_DECODER])
    folder, config = version_dir(repository, VAE_DECODER), opened.config("vae")
    available = rt.ort.get_available_providers()
    for provider in ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"):
        if provider not in available:
            rows[provider] = "skipped: not in this onnxruntime build"
            continue
        if provider != "CPUExecutionProvider" and not device.startswith("cuda"):
            continue
        first, step = (
            rt.runner(rt.ort.InferenceSession(str(folder / ONNX_FILES[VAE_DECODER][k]), providers=[provider]))
            for k in ("first", "step")
        )
        rows[provider] = timed(lambda f=first, s=step: chunked_decode(f, s, latents, config), repeats=2)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="the reduced mode: tiny checkpoint, fp32, CPU")
    parser.add_argument("--out", type=Path, default=Path("/tmp/wan-triton-gpu-check"))
    parser.add_argument("--repository", type=Path, help="an exported repository for the checkpoint (else: export)")
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint to use instead of building one")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args(argv)
    from wan_triton.checkpoints import build_checkpoint

    gpu = not args.cpu and torch.cuda.is_available()
    if not args.cpu and not gpu:
        print("gpu_check: no CUDA GPU visible to torch; run with --cpu for the reduced mode")
        return 2
    device, dtype = ("cuda", torch.bfloat16) if gpu else ("cpu", torch.float32)
    request = GPU_REQUEST if gpu else CPU_REQUEST
    checkpoint = args.checkpoint or args.out / ("wan-1.3b-shaped" if gpu else "tiny")
    started = time.perf_counter()
    if not (checkpoint / "model_index.json").is_file():
        build_checkpoint(checkpoint, size="1.3b" if gpu else "tiny")
    report = {
        "mode": "gpu" if gpu else "cpu (reduced)",
        "torch": torch.__version__,
        "request": {k: getattr(request, k) for k in ("height", "width", "num_frames")},
        "build_s": round(time.perf_counter() - started, 1),
        "denoising": denoising(checkpoint, request, device, dtype, compile_=gpu and not args.no_compile),
        "vae_decode_ms": vae_decode(checkpoint, args.repository, request, device),
        "total_s": None,
    }
    report["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
