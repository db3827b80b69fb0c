"""In-process benchmarks on the bench checkpoint: what the exported graphs buy, the encoder,
batched guidance, and how close one denoising step gets to this machine's matmul limit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from wan_triton.benchmarks.timing import ratio, timed
from wan_triton.contract import GenerationRequest
from wan_triton.pipeline import Pipeline
from wan_triton.pipeline.latents import initial_latents, latent_shape


def export_payoff(torch_pipe: Pipeline, onnx_pipe: Pipeline, request: GenerationRequest) -> dict:
    """ONNX Runtime vs torch: the text encoder (prompt and negative prompt, one batch) and the VAE
    decoder (the request's latents)."""
    prompts = [request.prompt, request.negative_prompt]
    shape = latent_shape(request.height, request.width, request.num_frames, 16, torch_pipe.geometry)
    latents = initial_latents(0, shape, "cpu").numpy()
    rows = {}
    for name, run in (
        ("text_encoder", lambda pipe: pipe.prompt_encoder(prompts)),
        ("vae_decoder", lambda pipe: pipe.decode(latents)),
    ):
        torch_ms = timed(lambda run=run: run(torch_pipe), repeats=5)
        onnx_ms = timed(lambda run=run: run(onnx_pipe), repeats=5)
        rows[name] = {"torch": torch_ms, "onnxruntime": onnx_ms, "onnx_over_torch": ratio(onnx_ms, torch_ms)}
    return rows


def encoders(frames: np.ndarray, fps: int, folder: Path) -> dict:
    """PyAV in-process (ours) vs imageio-ffmpeg (the official Wan repos' writer: an ffmpeg
    subprocess fed through a pipe), libx264 yuv420p, on the same uint8 frames."""
    import imageio_ffmpeg

    from wan_triton.video import encode_mp4

    def with_imageio() -> None:
        writer = imageio_ffmpeg.write_frames(
            str(folder / "imageio.mp4"), frames.shape[2:0:-1], fps=fps, codec="libx264", pix_fmt_out="yuv420p"
        )
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()

    pyav = timed(lambda: encode_mp4(frames, fps), repeats=5)
    imageio = timed(with_imageio, repeats=5)
    return {"pyav": pyav, "imageio_ffmpeg": imageio, "pyav_over_imageio": ratio(pyav, imageio)}


def _step_inputs(pipe: Pipeline, request: GenerationRequest):
    embeds = torch.from_numpy(pipe.prompt_encoder([request.prompt, request.negative_prompt]))
    channels = pipe.denoiser.latent_channels
    shape = latent_shape(request.height, request.width, request.num_frames, channels, pipe.geometry)
    return initial_latents(request.seed, shape, "cpu"), embeds[:1], embeds[1:]


def guidance(pipe: Pipeline, request: GenerationRequest) -> dict:
    """One denoising loop with classifier-free guidance batched into one forward vs two forwards."""
    latents, embeds, negative = _step_inputs(pipe, request)
    steps, scale = request.num_inference_steps, request.guidance_scale
    rows = {}
    for batched in (True, False):
        pipe.denoiser.batch_cfg = batched
        rows["batched" if batched else "two_forwards"] = timed(
            lambda: pipe.denoiser(latents, embeds, negative, steps, scale), repeats=3
        )
    pipe.denoiser.batch_cfg = True
    rows["batched_over_two"] = ratio(rows["batched"], rows["two_forwards"])
    rows["per_step_ms"] = round(rows["batched"]["median_ms"] / steps, 2)
    return rows


def efficiency(pipe: Pipeline, request: GenerationRequest, size: int = 2048) -> dict:
    """FLOPs of one denoising step (one batched-CFG transformer forward, counted by torch) over
    its time, as a fraction of this machine's fp32 matmul throughput (a {size}^3 matmul)."""
    from torch.utils.flop_counter import FlopCounterMode

    latents, embeds, negative = _step_inputs(pipe, request)
    model = pipe.denoiser.transformer
    batch = torch.cat([latents, latents])
    timestep = torch.tensor([500.0, 500.0])
    text = torch.cat([embeds, negative])

    def forward() -> None:
        with torch.inference_mode():
            model(hidden_states=batch, timestep=timestep, encoder_hidden_states=text, return_dict=False)

    counter = FlopCounterMode(display=False)
    with counter:
        forward()
    flops = counter.get_total_flops()
    step = timed(forward, repeats=5)
    a, b = torch.randn(size, size), torch.randn(size, size)
    matmul = timed(lambda: a @ b, repeats=10)
    peak = 2 * size**3 / (matmul["median_ms"] / 1e3)
    achieved = flops / (step["median_ms"] / 1e3)
    return {
        "step_gflop": round(flops / 1e9, 3),
        "step": step,
        "achieved_gflops": round(achieved / 1e9, 2),
        "matmul_gflops": round(peak / 1e9, 2),
        "fraction_of_matmul": round(achieved / peak, 3),
        "torch_threads": torch.get_num_threads(),
    }


def step_cache(pipe: Pipeline, request: GenerationRequest, thresholds=(0.05, 0.1, 0.2)) -> dict:
    """First-block cache (`cache_threshold`): speed-up and PSNR of the frames against the same
    request uncached. On a random checkpoint the residuals move more than on trained weights, so
    the cache hits less often here than it would on real Wan weights."""
    import dataclasses

    reference = pipe.frames(request)
    plain = timed(lambda: pipe.frames(request), repeats=3)
    rows = {"uncached": plain}
    for threshold in thresholds:
        cached_request = dataclasses.replace(request, cache_threshold=threshold)
        frames = pipe.frames(cached_request)
        mse = float(np.mean((frames - reference) ** 2))
        cost = timed(lambda r=cached_request: pipe.frames(r), repeats=3)
        rows[str(threshold)] = {
            **cost,
            "speedup": ratio(plain, cost),
            "psnr_db": round(10 * np.log10(1.0 / mse), 2) if mse > 0 else float("inf"),
        }
    return rows


def lora(checkpoint: Path, request: GenerationRequest, folder: Path, rank: int = 16) -> dict:
    """One denoising loop with a LoRA adapter (attention projections, `rank`) switched in
    through peft (`lora_names`) vs fused into the weights (`serve --fuse-lora`) vs none."""
    from wan_triton.checkpoints import build_lora
    from wan_triton.lora import Adapters, AllowList

    path = build_lora(checkpoint, folder / "lora", seed=1, rank=rank)
    (folder / "lora" / "loras.json").write_text(json.dumps({"adapters": {"bench": path.name}}))
    allow = AllowList.from_file(folder / "lora" / "loras.json")
    switched, fused = Pipeline.from_checkpoint(checkpoint), Pipeline.from_checkpoint(checkpoint)
    Adapters(fused.denoiser.experts(), allow).fuse(["bench"], [1.0])
    latents, embeds, negative = _step_inputs(switched, request)
    steps, scale = request.num_inference_steps, request.guidance_scale

    def loop(pipe: Pipeline):
        return lambda: pipe.denoiser(latents, embeds, negative, steps, scale)

    rows = {"base": timed(loop(switched), repeats=3)}
    with Adapters(switched.denoiser.experts(), allow).use(["bench"], [1.0]):
        rows["unfused"] = timed(loop(switched), repeats=3)
    rows["fused"] = timed(loop(fused), repeats=3)
    rows["fused_over_unfused"] = ratio(rows["fused"], rows["unfused"])
    rows["unfused_over_base"] = ratio(rows["unfused"], rows["base"])
    rows["per_step_ms"] = {k: round(rows[k]["median_ms"] / steps, 2) for k in ("base", "unfused", "fused")}
    rows["rank"] = rank
    return rows
