"""The first GPU run, in one command: `make test-gpu` (pytest -m gpu), skipped without a CUDA GPU.

On a CUDA machine: the bench-size checkpoints (tiny_checkpoint's layout at Wan2.1-1.3B-like widths,
random weights) served with GPU instance groups, the bf16 denoiser and ONNX Runtime's CUDA provider;
T2V and I2V against the CPU fp32 reference, a stream cancelled mid-way, a LoRA request, and the memory
plan against what the GPU processes hold. Every figure goes into one report (WAN_TRITON_GPU_REPORT,
default out/gpu-report.json), which `make test-gpu` completes with benchmarks/gpu_check.sh.

Tolerances are stated, not tuned: bf16 against fp32 over a few steps of a random transformer is
expected within PSNR 25 dB on [0, 1] frames; the first run's report says what it really is.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import serve, stop

from wan_triton.client import Client, ClientError

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch"),
]
REPORT = Path(os.environ.get("WAN_TRITON_GPU_REPORT", "out/gpu-report.json"))
MIN_PSNR_DB = 25.0
REQUEST = {"height": 256, "width": 256, "num_frames": 17, "num_inference_steps": 6, "seed": 7}
FIGURES: dict = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


@pytest.fixture(scope="module", autouse=True)
def report():
    yield FIGURES
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(FIGURES, indent=2, default=str) + "\n")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from wan_triton.checkpoints import build_checkpoint, build_lora
    from wan_triton.export import export

    root = tmp_path_factory.mktemp("gpu")
    checkpoint = build_checkpoint(root / "t2v", size="bench")
    exported = root / "repo" / "model_repository"
    started = time.perf_counter()
    export(checkpoint, exported)
    FIGURES["export_s"] = round(time.perf_counter() - started, 1)
    loras = root / "loras"
    build_lora(checkpoint, loras, seed=1).rename(loras / "a.safetensors")
    (loras / "loras.json").write_text(json.dumps({"adapters": {"a": "a.safetensors"}}))
    started = time.perf_counter()
    served = serve(checkpoint, exported, root / "served", extra=("--loras", str(loras / "loras.json")))
    FIGURES["ready_s"] = round(time.perf_counter() - started, 1)
    yield served
    stop(served)


def reference(checkpoint: Path, **options) -> np.ndarray:
    """The CPU fp32 torch pipeline's frames, uint8, for the same request."""
    from wan_triton.contract import validate
    from wan_triton.pipeline import Pipeline
    from wan_triton.video import to_uint8

    pipeline = Pipeline.from_checkpoint(checkpoint, device="cpu", dtype=torch.float32)
    return to_uint8(pipeline.frames(validate({"prompt": "a red cat", **REQUEST, **options}, task="t2v")))


def test_gpu_instance_groups_and_providers(bench):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(bench.url)
    kinds = {
        name: client.get_model_config(name, as_json=True)["config"]["instance_group"][0]["kind"]
        for name in ("denoiser", "vae_decoder", "text_encoder", "wan_t2v")
    }
    FIGURES["instance_kinds"] = kinds
    assert kinds["denoiser"] == "KIND_GPU" and kinds["vae_decoder"] == "KIND_GPU" and kinds["wan_t2v"] == "KIND_CPU"


def test_t2v_on_the_gpu_matches_the_cpu_fp32_reference(bench):
    started = time.perf_counter()
    served = Client(bench.url).generate("a red cat", frames=True, **REQUEST)
    FIGURES["t2v_s"] = round(time.perf_counter() - started, 2)
    expected = reference(bench.checkpoint)
    got = served.frames[0]
    FIGURES["t2v_psnr_db_vs_cpu_fp32"] = round(psnr(got, expected), 2)
    FIGURES["t2v_max_abs_levels"] = int(np.abs(got.astype(int) - expected.astype(int)).max())
    assert got.shape == expected.shape
    assert FIGURES["t2v_psnr_db_vs_cpu_fp32"] >= MIN_PSNR_DB


def test_i2v_on_the_gpu(tmp_path):
    from PIL import Image

    from wan_triton.checkpoints import build_checkpoint

    checkpoint = build_checkpoint(tmp_path / "ti2v", variant="ti2v-2.2", size="bench")
    served = serve(checkpoint, None, tmp_path / "served")
    try:
        image = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8)).save(image, "PNG")
        started = time.perf_counter()
        result = Client(served.url).generate("a red cat", image=image.getvalue(), frames=True, **REQUEST)
        FIGURES["i2v_ti2v_s"] = round(time.perf_counter() - started, 2)
        assert result.frames.shape[1] == REQUEST["num_frames"]
    finally:
        stop(served)


def test_a_stream_cancelled_on_the_gpu_frees_the_denoiser(bench):
    class Leave(Exception):
        pass

    def leave_after_two(progress) -> None:
        if progress.step == 2:
            raise Leave

    long = {**REQUEST, "num_inference_steps": 50}
    with pytest.raises((Leave, ClientError)):
        Client(bench.url, retries=0).generate_stream("long", on_progress=leave_after_two, **long)
    started = time.perf_counter()
    Client(bench.url).generate("next", **REQUEST)
    FIGURES["next_after_cancel_s"] = round(time.perf_counter() - started, 2)


def test_a_lora_request_on_the_gpu(bench):
    base = Client(bench.url).generate("a red cat", frames=True, **REQUEST).frames
    adapted = Client(bench.url).generate("a red cat", frames=True, lora_names=["a"], lora_scales=[1.0], **REQUEST)
    FIGURES["lora_psnr_db_vs_base"] = round(psnr(adapted.frames, base), 2)
    assert not np.array_equal(adapted.frames, base)


def test_the_memory_plan_bounds_what_the_gpu_holds(bench):
    from wan_triton.contract import Limits
    from wan_triton.plan import make_plan
    from wan_triton.serving.server import stub_processes

    query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    lines = subprocess.run(query, capture_output=True, text=True, check=True).stdout.splitlines()
    used = {int(pid): int(mib) << 20 for pid, mib in (line.split(", ") for line in lines if line.strip())}
    ours = {pid: used[pid] for pid in stub_processes(bench.repository) if pid in used}
    memory = torch.cuda.get_device_properties(0).total_memory
    plan = make_plan(bench.checkpoint, torch.cuda.device_count(), memory, Limits())
    FIGURES["gpu_bytes_measured_per_stub"] = ours
    FIGURES["gpu_bytes_measured"], FIGURES["gpu_bytes_planned"] = sum(ours.values()), plan.gpu_bytes()
    FIGURES["plan"] = plan.to_json()
    assert ours, "the GPU stages hold GPU memory"
    assert sum(ours.values()) <= plan.gpu_bytes()
