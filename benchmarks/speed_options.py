"""Speed options against the exact output: time per video relative to diffusers' in-process WanPipeline on
the same checkpoint and inputs, and quality against our exact path (luma PSNR of the decoded frames, the
relative error of the final latents). `make bench` runs it on the bench-size checkpoint, whose random
weights have none of the step-to-step smoothness caches rely on (its quality columns are a floor); a
checkpoint that really denoises (`wan-triton train-tiny`) is the one to judge quality on.

    python -m wan_triton.benchmarks.speed_options --checkpoint DIR [--steps 30] [--out FILE]

MagCache is calibrated first, on the checkpoint, with diffusers' own calibration (one run of the same
request); the ratios go into the result beside the rows that used them. The deployment options
(`serve --compile`, `--quantize int8`) run on a copy of the transformer, their warm-up timed apart; the
text cache is on in every row but the one that turns it off (to show it is exact). The `gguf` rows load
the transformer from a GGUF file written from the checkpoint (`serve --gguf`, checkpoints/gguf.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch

from wan_triton.acceleration import Acceleration
from wan_triton.benchmarks.timing import ratio, timed
from wan_triton.checkpoints import gguf
from wan_triton.contract import GenerationRequest
from wan_triton.pipeline import Pipeline
from wan_triton.pipeline.checkpoint import Checkpoint
from wan_triton.pipeline.denoise import Denoiser
from wan_triton.pipeline.latents import initial_latents, latent_shape
from wan_triton.pipeline.reference import diffusers_frames
from wan_triton.pipeline.step_cache import StepCache, calibrate_mag_ratios
from wan_triton.pipeline.vae import to_frames

# train-tiny's grammar and size; 30 steps leave the caches room to skip.
SPEED_REQUEST = GenerationRequest(
    prompt="a red circle moving right on a blue background",
    height=64,
    width=64,
    num_frames=17,
    num_inference_steps=30,
    seed=7,
)
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def luma_psnr(frames: np.ndarray, reference: np.ndarray) -> float:
    """PSNR (dB) of the luma of [F, H, W, 3] frames in [0, 1]."""
    mse = float(np.mean(((frames - reference) @ LUMA) ** 2))
    return round(10.0 * np.log10(1.0 / mse), 2) if mse > 0 else float("inf")


def relative_error(latents: torch.Tensor, reference: torch.Tensor) -> float:
    return round(float((latents - reference).norm() / reference.norm()), 5)


def measure(checkpoint: Path, request: GenerationRequest, repeats: int = 3, repository: Path | None = None) -> dict:
    """`repository`: the checkpoint's exported graphs, so that our rows run the stages as the server does
    (text encoder and VAE on ONNX Runtime); without it, torch for every stage."""
    from diffusers import WanPipeline

    pipe = Pipeline.from_checkpoint(checkpoint, repository)
    steps = request.num_inference_steps
    shape = latent_shape(request.height, request.width, request.num_frames, 16, pipe.geometry)
    noise = initial_latents(request.seed, shape, "cpu")

    def ours(
        cache: StepCache | None = None, steps: int = steps, denoiser: Denoiser | None = None
    ) -> Callable[[], tuple[torch.Tensor, np.ndarray]]:
        denoise = denoiser or pipe.denoiser

        def run():  # what diffusers' call does too: encode the prompts, denoise, decode
            embeds = torch.from_numpy(pipe.prompt_encoder([request.prompt, request.negative_prompt]))
            latents = denoise(noise, embeds[:1], embeds[1:], steps, request.guidance_scale, cache=cache)
            return latents, to_frames(pipe.decode(latents.float().numpy()))

        return run

    theirs = WanPipeline.from_pretrained(checkpoint)

    def diffusers_run():  # seeded as ours: the same initial noise
        return diffusers_frames(theirs, request)

    reference_latents, reference = ours()()
    theirs_frames = diffusers_run()
    before = timed(diffusers_run, repeats=repeats)
    mag_ratios = calibrate_mag_ratios(ours(), pipe.denoiser.transformers(), steps)
    options: dict[str, StepCache | None] = {
        "exact": None,
        "first_block 0.05": StepCache("first_block", 0.05),
        "first_block 0.1": StepCache("first_block", 0.1),
        "first_block 0.2": StepCache("first_block", 0.2),
        "mag 0.06": StepCache("mag", 0.06, mag_ratios=tuple(mag_ratios)),
        "mag 0.12": StepCache("mag", 0.12, mag_ratios=tuple(mag_ratios)),
        "mag 0.24": StepCache("mag", 0.24, mag_ratios=tuple(mag_ratios)),
        "taylorseer 2": StepCache("taylorseer", interval=2),
        "taylorseer 3": StepCache("taylorseer", interval=3),
        "faster 2": StepCache("faster", interval=2),
        "faster 3": StepCache("faster", interval=3),
        "sea 0.25": StepCache("sea", 0.25),
        "sea 0.5": StepCache("sea", 0.5),
        "pyramid 2": StepCache("pyramid", interval=2),
        "pyramid 3": StepCache("pyramid", interval=3),
    }
    runs = {name: ours(cache) for name, cache in options.items()}
    # The text cache (pipeline/text_cache.py) is exact: off, the same latents bit for bit, and slower.
    runs["exact, text cache off"] = ours(None, denoiser=dataclasses.replace(pipe.denoiser, cache_text=False))
    half = steps // 2  # the plainest speed option, for scale, alone and with the others
    runs[f"exact, {half} steps"] = ours(None, half)
    runs[f"first_block 0.1, {half} steps"] = ours(StepCache("first_block", 0.1), half)

    def measure_each(runs: dict) -> dict:
        return {name: (run(), timed(run, repeats=repeats, warmup=0)) for name, run in runs.items()}  # warmed

    with tempfile.TemporaryDirectory() as folder:  # the transformer from a GGUF file, as `serve --gguf` loads it
        for quant in ("Q8_0", "Q4_0"):
            file = Path(folder) / f"{quant}.gguf"
            gguf.write(checkpoint / "transformer", file, quant)
            from_file = Denoiser.from_checkpoint(Checkpoint.open(checkpoint), gguf={"transformer": file})
            runs[f"gguf {quant}"] = ours(None, denoiser=from_file)
    measured = measure_each(runs)
    warm_up_s: dict[str, float] = {}
    for option in (Acceleration(compile=True), *(Acceleration(quantize=q) for q in ("int8", "int8-weights"))):
        # Each measured while it is the only compiled copy (dynamo's caches reset before the next), as served.
        name = "compile" if option.quantize is None else f"{option.quantize} (compiled)"
        torch._dynamo.reset()
        denoiser, warm_up_s[name] = accelerated(pipe.denoiser, option, ours)
        compiled = {name: ours(None, denoiser=denoiser)}
        if option.quantize == "int8":
            compiled[f"{name}, {half} steps"] = ours(None, half, denoiser)
        measured |= measure_each(compiled)
    # diffusers timed again after ours: a shared machine's drift over the run lands on both sides.
    after = timed(diffusers_run, repeats=repeats, warmup=0)
    baseline = {
        "median_ms": round((before["median_ms"] + after["median_ms"]) / 2, 2),
        "min_ms": min(before["min_ms"], after["min_ms"]),
        "max_ms": max(before["max_ms"], after["max_ms"]),
    }
    rows: dict[str, dict] = {
        "diffusers WanPipeline": {
            **baseline,
            "over_diffusers": 1.0,
            "luma_psnr_db": luma_psnr(theirs_frames, reference),
        }
    }
    for name, ((latents, frames), cost) in measured.items():
        rows[name] = {
            **cost,
            "over_diffusers": ratio(cost, baseline),
            "luma_psnr_db": luma_psnr(frames, reference),
            "latent_rel_error": relative_error(latents, reference_latents),
        }
    return {
        "checkpoint": checkpoint.name,
        "stages": "text encoder and VAE on ONNX Runtime (as served)" if repository else "torch",
        "request": {k: getattr(request, k) for k in ("prompt", "height", "width", "num_frames", "num_inference_steps")},
        "torch_threads": torch.get_num_threads(),
        "mag_ratios": [round(r, 4) for r in mag_ratios],
        "warm_up_s": warm_up_s,
        "rows": rows,
    }


def accelerated(denoiser: Denoiser, option: Acceleration, ours) -> tuple[Denoiser, float]:
    """A copy of `denoiser` with `option` applied as `serve` applies it, and the seconds its warm-up took
    (one step, paid at load when served: the compiled graph is dynamic, so no later shape recompiles)."""
    copy = dataclasses.replace(
        denoiser,
        transformer=deepcopy(denoiser.transformer),
        transformer_2=deepcopy(denoiser.transformer_2) if denoiser.transformer_2 is not None else None,
    )
    started = time.perf_counter()
    option.apply(copy)
    ours(None, 1, copy)()
    return copy, round(time.perf_counter() - started, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="e.g. a `wan-triton train-tiny` output")
    parser.add_argument("--steps", type=int, default=SPEED_REQUEST.num_inference_steps)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repository", type=Path, help="the checkpoint's exports (wan-triton export): served stages")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    request = dataclasses.replace(SPEED_REQUEST, num_inference_steps=args.steps)
    result = measure(args.checkpoint, request, args.repeats, args.repository)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
