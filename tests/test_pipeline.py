"""The composed stages give diffusers' WanPipeline frames for the same checkpoint, inputs and seed."""

import json
import shutil

import numpy as np
import pytest
from conftest import small_request

from wan_triton.pipeline import Pipeline
from wan_triton.pipeline.reference import diffusers_frames

TOLERANCE = 1e-4  # max abs difference on frames in [0, 1]


def reference(checkpoint, request, **pipe_overrides) -> np.ndarray:
    from diffusers import WanPipeline

    return diffusers_frames(WanPipeline.from_pretrained(checkpoint, **pipe_overrides), request)


def assert_parity(ours: np.ndarray, theirs: np.ndarray) -> float:
    assert ours.shape == theirs.shape
    error = float(np.abs(ours - theirs).max())
    assert error <= TOLERANCE, error
    return error


@pytest.fixture(scope="module")
def torch_pipeline(tiny_checkpoint):
    return Pipeline.from_checkpoint(tiny_checkpoint)


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_torch_stages_match_diffusers(tiny_checkpoint, torch_pipeline, guidance):
    request = small_request(guidance_scale=guidance)
    ours = torch_pipeline.frames(request)
    assert ours.shape == (9, 32, 48, 3) and ours.dtype == np.float32
    assert_parity(ours, reference(tiny_checkpoint, request))


def test_exported_graphs_match_diffusers(tiny_checkpoint, exported_repository):
    request = small_request(num_frames=13, height=48, width=32)
    ours = Pipeline.from_checkpoint(tiny_checkpoint, exported_repository).frames(request)
    assert_parity(ours, reference(tiny_checkpoint, request))


def test_flow_shift_override_matches_a_reconfigured_scheduler(tiny_checkpoint, torch_pipeline):
    from diffusers import UniPCMultistepScheduler

    request = small_request(flow_shift=7.0)
    scheduler = UniPCMultistepScheduler.from_pretrained(tiny_checkpoint, subfolder="scheduler", flow_shift=7.0)
    shifted = torch_pipeline.frames(request)
    assert_parity(shifted, reference(tiny_checkpoint, request, scheduler=scheduler))
    assert np.abs(shifted - torch_pipeline.frames(small_request())).max() > 1e-3


def test_flow_match_euler_checkpoint(tiny_checkpoint, tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler

    path = tmp_path / "euler"
    shutil.copytree(tiny_checkpoint, path)
    shutil.rmtree(path / "scheduler")
    FlowMatchEulerDiscreteScheduler(shift=5.0).save_pretrained(path / "scheduler")
    index = json.loads((path / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    (path / "model_index.json").write_text(json.dumps(index))
    request = small_request()
    assert_parity(Pipeline.from_checkpoint(path).frames(request), reference(path, request))


def test_two_experts_switch_at_the_boundary(two_experts):
    """Wan2.2 A14B layout: transformer_2 takes the low-noise steps with its own guidance."""
    request = small_request(guidance_scale_2=3.0)
    two = Pipeline.from_checkpoint(two_experts)
    assert two.denoiser.transformer_2 is not None
    ours = two.frames(request)
    assert_parity(ours, reference(two_experts, request))
    assert np.abs(ours - two.frames(small_request(guidance_scale_2=5.0))).max() > 1e-3  # guidance_scale_2 used
    two.denoiser.transformer_2 = None  # the high-noise expert alone: another video
    assert np.abs(ours - two.frames(request)).max() > 1e-3


def test_batched_guidance_equals_two_forwards(torch_pipeline):
    request = small_request()
    batched = torch_pipeline.frames(request)
    torch_pipeline.denoiser.batch_cfg = False
    try:
        separate = torch_pipeline.frames(request)
    finally:
        torch_pipeline.denoiser.batch_cfg = True
    assert np.abs(batched - separate).max() <= 1e-5


def test_callback_sees_every_step_and_can_stop_the_loop(torch_pipeline):
    seen = []
    torch_pipeline.frames(small_request(num_inference_steps=5), callback=lambda i, n, _: seen.append((i, n)))
    assert seen == [(i, 5) for i in range(5)]

    class Stop(Exception):
        pass

    def stop_at_two(index, total, latents):
        if index == 2:
            raise Stop

    with pytest.raises(Stop):
        torch_pipeline.frames(small_request(num_inference_steps=5), callback=stop_at_two)


def test_seed_decides_the_video(torch_pipeline):
    a = torch_pipeline.frames(small_request(seed=1))
    assert np.array_equal(a, torch_pipeline.frames(small_request(seed=1)))
    assert np.abs(a - torch_pipeline.frames(small_request(seed=2))).max() > 1e-3


def test_step_cache_skips_blocks_and_leaves_nothing_behind(torch_pipeline):
    """A first-block cache threshold makes steps skip the remaining blocks (counted inside the last
    block: the cache hook replaces its forward); the request after it, uncached, gives the bytes
    it gives on a fresh pipeline."""
    last_block = torch_pipeline.denoiser.transformer.blocks[-1]
    calls = []
    handle = last_block.ffn.register_forward_hook(lambda *_: calls.append(1))
    try:
        plain = torch_pipeline.frames(small_request(num_inference_steps=8))
        full = len(calls)
        calls.clear()
        cached = torch_pipeline.frames(small_request(num_inference_steps=8, cache_threshold=1.0))
        skipped = full - len(calls)
        calls.clear()
        again = torch_pipeline.frames(small_request(num_inference_steps=8))
    finally:
        handle.remove()
    assert full == 8 and 0 < skipped < 8  # the first steps always run in full
    assert cached.shape == plain.shape and np.array_equal(again, plain) and len(calls) == full
