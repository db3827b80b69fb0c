"""The memory plan, on config-only folders in the published checkpoints' shapes (no weights): parameter
counts, placement, what fits an 80 GiB GPU, what serve refuses, and the deadline that follows the size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wan_triton.checkpoints.shapes import SHAPES, write_shape
from wan_triton.contract import Limits
from wan_triton.parallel import Parallel
from wan_triton.plan import GIB, PlanError, default_deadline_s, make_plan, parse_bytes
from wan_triton.repository import AUDIO_ENCODER, DENOISER, TEXT_ENCODER

# The published sizes, as their model cards give them (billions of parameters).
PUBLISHED = {"t2v-1.3b": 1.3, "t2v-14b": 14.0, "t2v-a14b": 14.0, "ti2v-5b": 5.0}
# A 720p, 81-frame request at most: what 14B deployments set (docs/DEPLOY.md).
LIMITS_720P = Limits(max_side=1280, max_frames=81, max_output_bytes=1280 * 720 * 81 * 3)
LIMITS_480P = Limits(max_side=832, max_frames=81, max_output_bytes=832 * 480 * 81 * 3)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shapes")
    return {name: write_shape(root / name, name) for name in PUBLISHED}


def test_every_shape_writes_configs_only(shapes):
    for name, folder in shapes.items():
        assert not list(folder.rglob("*.safetensors")), name
        index = json.loads((folder / "model_index.json").read_text())
        assert index["_class_name"] == SHAPES[name].pipeline
        assert (folder / "text_encoder" / "config.json").is_file() and (folder / "vae" / "config.json").is_file()
    assert json.loads((shapes["t2v-a14b"] / "model_index.json").read_text())["boundary_ratio"] == 0.875


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_parameter_counts_match_the_published_sizes(shapes, name):
    plan = make_plan(shapes[name])
    transformer = next(p for p in plan.parts if p.component == "transformer")
    assert abs(transformer.parameters / 1e9 - PUBLISHED[name]) / PUBLISHED[name] < 0.1, transformer.parameters
    text = next(p for p in plan.parts if p.model == TEXT_ENCODER)
    assert 5.6e9 < text.parameters < 5.8e9  # UMT5-XXL's encoder
    assert text.weight_bytes == 4 * text.parameters and transformer.weight_bytes == 2 * transformer.parameters


def test_1_3b_fits_one_80_gib_gpu_whole(shapes):
    plan = make_plan(shapes["t2v-1.3b"], gpus=1, gpu_memory=80 * GIB, limits=LIMITS_720P)
    assert plan.fits and not plan.warnings and plan.cpu_models() == frozenset()
    assert all(p.device == "gpu" for p in plan.parts)


def test_14b_fits_80_gib_at_720p_and_48_gib_at_480p_with_the_text_encoder_on_the_cpu(shapes):
    whole = make_plan(shapes["t2v-14b"], gpus=1, gpu_memory=80 * GIB, limits=LIMITS_720P)
    assert whole.fits and not whole.warnings and whole.cpu_models() == frozenset()
    plan = make_plan(shapes["t2v-14b"], gpus=1, gpu_memory=48 * GIB, limits=LIMITS_480P)
    assert plan.fits and not plan.warnings and plan.cpu_models() == {TEXT_ENCODER}
    assert plan.gpu_bytes() <= 48 * GIB


def test_a14b_holds_both_experts_and_does_not_fit_40_gib(shapes):
    plan = make_plan(shapes["t2v-a14b"], gpus=1, gpu_memory=80 * GIB, limits=LIMITS_720P)
    experts = [p for p in plan.parts if p.model == DENOISER]
    assert [p.component for p in experts] == ["transformer", "transformer_2"] and plan.fits
    small = make_plan(shapes["t2v-a14b"], gpus=1, gpu_memory=40 * GIB, limits=LIMITS_720P)
    assert not small.fits
    assert "transformer_2" in small.problems[0] and "40.0 GiB" in small.problems[0]


def test_limits_admitting_more_than_the_gpu_holds_are_a_warning_naming_them(shapes):
    plan = make_plan(shapes["t2v-14b"], gpus=1, gpu_memory=80 * GIB)  # the default limits: up to 1920 px
    assert plan.fits and plan.warnings and "max_side" in plan.warnings[0]


def test_without_gpus_everything_is_planned_on_the_cpu_in_fp32(shapes):
    plan = make_plan(shapes["ti2v-5b"], gpus=0)
    assert plan.fits and {p.device for p in plan.parts} == {"cpu"} and plan.cpu_models() == frozenset()
    assert next(p for p in plan.parts if p.model == DENOISER).dtype == "fp32"


def test_the_cli_prints_the_plan_and_exits_1_when_it_does_not_fit(shapes):
    command = [sys.executable, "-m", "wan_triton.cli", "plan", "--checkpoint", str(shapes["t2v-a14b"])]
    fits = subprocess.run([*command, "--json"], capture_output=True, text=True)
    assert fits.returncode == 0, fits.stderr
    assert json.loads(fits.stdout)["fits"] is True
    refused = subprocess.run([*command, "--gpu-memory", "40GiB"], capture_output=True, text=True)
    assert refused.returncode == 1 and "does not fit" in refused.stdout


def test_serve_refuses_weights_that_cannot_fit_with_the_numbers(shapes, monkeypatch):
    """serve's start-up check, on the GPUs a machine reports (two of 40 GiB here)."""
    import torch

    from wan_triton.serving.server import gpu_plan

    class Properties:
        total_memory = 40 * GIB

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _: Properties())
    with pytest.raises(PlanError, match="weights alone need"):
        gpu_plan(shapes["t2v-a14b"], LIMITS_720P, log=lambda _: None)
    # 1.3B with UMT5 in fp32 is 42 GiB: on 40 GiB GPUs the text encoder goes to the CPU.
    assert gpu_plan(shapes["t2v-1.3b"], LIMITS_720P, log=lambda _: None) == {TEXT_ENCODER}


def test_the_deadline_follows_the_transformer_size(shapes, tiny_checkpoint):
    assert default_deadline_s(tiny_checkpoint) == Limits().deadline_s
    assert default_deadline_s(shapes["t2v-1.3b"]) == Limits().deadline_s
    assert default_deadline_s(shapes["t2v-14b"]) == 8 * Limits().deadline_s  # 14.3B: 8 x 2B


def test_sizes_parse():
    assert parse_bytes("80GiB") == 80 * GIB and parse_bytes("80GB") == 80 * 10**9 and parse_bytes("1024") == 1024
    with pytest.raises(ValueError):
        parse_bytes("lots")


def test_parallel_mode_plans_each_rank_s_share(shapes):
    """Every rank holds the whole 14B transformer; the activations split over the sequence ranks
    and halve again with cfg=2; the other ranks' GPUs hold the denoiser's part alone."""
    whole = make_plan(shapes["t2v-14b"], gpus=8, gpu_memory=80 * GIB, limits=LIMITS_720P)
    split = make_plan(shapes["t2v-14b"], gpus=8, gpu_memory=80 * GIB, limits=LIMITS_720P, parallel=Parallel(ulysses=4))
    both = make_plan(
        shapes["t2v-14b"], gpus=8, gpu_memory=80 * GIB, limits=LIMITS_720P, parallel=Parallel(ulysses=4, cfg=2)
    )
    denoiser = [next(p for p in plan.parts if p.model == DENOISER) for plan in (whole, split, both)]
    assert denoiser[0].weight_bytes == denoiser[1].weight_bytes == denoiser[2].weight_bytes  # weights per rank
    assert denoiser[1].working_bytes == denoiser[0].working_bytes // 4
    assert denoiser[2].working_bytes == denoiser[0].working_bytes // 8
    assert split.ranks == 4 and split.worker_bytes() < split.gpu_bytes()
    assert "per GPU of ranks 1-3" in split.table() and "gpu_bytes_per_worker_gpu" in split.to_json()
    command = [sys.executable, "-m", "wan_triton.cli", "plan", "--checkpoint", str(shapes["t2v-14b"])]
    refused = subprocess.run([*command, "--parallel", "ulysses=0"], capture_output=True, text=True)
    assert refused.returncode == 2 and "ulysses=0" in refused.stderr


def test_the_s2v_release_layout_plans_its_transformer_and_wav2vec2(tmp_path):
    """Wan2.2-S2V-14B's release layout (configs only): the 14B DiT plus S2V's audio and motion modules, and
    wav2vec2-large (315M); a clip at 720p fits one 80 GiB GPU."""
    folder = write_shape(tmp_path / "s2v-14b", "s2v-14b")
    assert not list(folder.rglob("*.safetensors")) and not (folder / "model_index.json").exists()
    plan = make_plan(folder, gpus=1, gpu_memory=80 * GIB, limits=LIMITS_720P)
    parts = {part.model: part for part in plan.parts}
    assert 14e9 < parts[DENOISER].parameters < 17e9, parts[DENOISER].parameters
    assert 3.1e8 < parts[AUDIO_ENCODER].parameters < 3.2e8
    assert plan.fits, plan.table()
    assert default_deadline_s(folder) == Limits().deadline_s * 9  # 1800 s per 2B parameters, rounded up
