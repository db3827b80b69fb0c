"""The benchmarks run and render (on the tiny checkpoint, one repeat): `make bench` cannot rot.
Their figures are measured by `make bench`, never asserted here."""

from __future__ import annotations

import dataclasses
import json

from conftest import small_request

from wan_triton.benchmarks import inprocess, speed_options
from wan_triton.benchmarks import served as through_triton
from wan_triton.benchmarks.report import render
from wan_triton.benchmarks.run import settings
from wan_triton.pipeline import Pipeline
from wan_triton.video import to_uint8

SPEED_SMALL = dataclasses.replace(speed_options.SPEED_REQUEST, height=32, width=48, num_frames=9, num_inference_steps=6)


def test_benchmarks_run_and_render(tiny_checkpoint, exported_repository, served, tmp_path):
    request = small_request()
    torch_pipe = Pipeline.from_checkpoint(tiny_checkpoint)
    onnx_pipe = Pipeline.from_checkpoint(tiny_checkpoint, exported_repository)
    results = {
        "machine": "test",
        "date": "today",
        "checkpoint": "tiny",
        "request": settings(request),
        "results_file": "results.json",
        "export_payoff": inprocess.export_payoff(torch_pipe, onnx_pipe, request),
        "encode": inprocess.encoders(to_uint8(onnx_pipe.frames(request)), request.fps, tmp_path),
        "guidance": inprocess.guidance(onnx_pipe, request),
        "efficiency": inprocess.efficiency(onnx_pipe, request, size=256),
        "step_cache": inprocess.step_cache(onnx_pipe, request, thresholds=(0.5,)),
        "lora": inprocess.lora(tiny_checkpoint, request, tmp_path, rank=4),
        "overhead": through_triton.overhead(served.url, tiny_checkpoint, request, repeats=1),
        "steps": through_triton.steps(served.url, request),
        "speed_options": {
            "tiny": speed_options.measure(tiny_checkpoint, SPEED_SMALL, repeats=1, repository=exported_repository)
        },
    }
    rows = results["speed_options"]["tiny"]["rows"]
    assert rows["exact"]["luma_psnr_db"] == float("inf") and rows["exact"]["latent_rel_error"] == 0.0
    assert rows["diffusers WanPipeline"]["luma_psnr_db"] > 40  # the same model, diffusers' arithmetic
    assert rows["exact, text cache off"]["latent_rel_error"] == 0.0  # the text cache is exact
    assert rows["compile"]["latent_rel_error"] < 1e-4 and 0 < rows["int8 (compiled)"]["latent_rel_error"] < 0.2
    assert set(results["export_payoff"]) == {"text_encoder", "vae_decoder"}
    assert results["efficiency"]["step_gflop"] > 0 and results["overhead"]["per_stage_ms"]
    json.dumps(results)  # what `wan-triton bench` saves after every section
    text = render(results, tmp_path / "PERFORMANCE.md").read_text()
    assert "Serving overhead" in text and "| denoiser |" in text and "step cache, threshold 0.5" in text
    assert "LoRA (rank 4) fused" in text
    assert "| taylorseer 2 |" in text and "| mag 0.12 |" in text and "| int8 (compiled) |" in text
    assert "| sea 0.25 |" in text and "| pyramid 2 |" in text and "| gguf Q8_0 |" in text


def test_gpu_check_reduced_mode(tiny_checkpoint, exported_repository, tmp_path, capsys):
    """benchmarks/gpu_check.sh --cpu: the GPU check's code path on this machine (tiny, fp32)."""
    import json

    from wan_triton.benchmarks import gpu_check

    args = ["--cpu", "--out", str(tmp_path), "--checkpoint", str(tiny_checkpoint)]
    assert gpu_check.main([*args, "--repository", str(exported_repository)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["denoising"]["ours_s_per_step"] > 0 and report["denoising"]["diffusers_s_per_step"] > 0
    assert report["vae_decode_ms"]["CPUExecutionProvider"]["median_ms"] > 0
