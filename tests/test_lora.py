"""LoRA adapters in-process: the allow-list (R19, R20), parity with diffusers' `load_lora_weights`
+ `set_adapters`, no leak between calls, least-recently-used eviction, fusing."""

import json

import numpy as np
import pytest
from conftest import LORA_SCALES as SCALES
from conftest import small_request
from test_pipeline import assert_parity
from test_tasks import two_forward

from wan_triton.contract import RequestError
from wan_triton.lora import Adapters, AllowList
from wan_triton.pipeline import Pipeline
from wan_triton.pipeline.reference import diffusers_frames


@pytest.fixture(scope="module")
def allow(loras) -> AllowList:
    return AllowList.from_file(loras)


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint):
    return two_forward(Pipeline.from_checkpoint(tiny_checkpoint))


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../a", "is not an allowed adapter"),
        ("parent", "outside the adapter root"),
        ("absolute", "outside the adapter root"),
        ("symlink", "outside the adapter root"),
        ("pickle", "only .safetensors load"),
        ("torch", "only .safetensors load"),
        ("gone", "missing"),
    ],
)
def test_the_allow_list_refuses(allow, name, reason):
    with pytest.raises(RequestError, match=reason) as refused:
        allow.resolve(name)
    assert refused.value.field == "lora_names"
    assert name in allow.problems() or name not in allow.adapters


def test_adapters_match_diffusers_and_leave_nothing_behind(tiny_checkpoint, allow, pipeline):
    from diffusers import WanPipeline

    request = small_request()
    base = pipeline.frames(request)
    adapters = Adapters(pipeline.denoiser.transformer, allow)
    with adapters.use(list(SCALES), list(SCALES.values())):
        ours = pipeline.frames(request)
    assert np.array_equal(pipeline.frames(request), base)  # no leak into the next call
    assert np.abs(ours - base).max() > 1e-3  # the adapters do something

    pipe = WanPipeline.from_pretrained(tiny_checkpoint)
    for name in SCALES:
        pipe.load_lora_weights(str(allow.resolve(name)), adapter_name=name)
    pipe.set_adapters(list(SCALES), list(SCALES.values()))
    assert_parity(ours, diffusers_frames(pipe, request))


def test_least_recently_used_goes_first(allow, pipeline):
    model = pipeline.denoiser.transformer
    model.delete_adapters(list(getattr(model, "peft_config", {})))  # from the tests before
    adapters = Adapters(model, allow, capacity=1)
    with adapters.use(["a"], [1.0]):
        pass
    with adapters.use(["b"], [1.0]):
        assert list(adapters.loaded) == ["b"]
        assert set(pipeline.denoiser.transformer.peft_config) == {"b"}
    with pytest.raises(RequestError, match="at most 1"), adapters.use(["a", "b"], [1.0, 1.0]):
        pass
    adapters.model.delete_adapters(list(adapters.loaded))


def test_fused_equals_switched(tiny_checkpoint, allow, pipeline):
    request = small_request()
    with Adapters(pipeline.denoiser.transformer, allow).use(["a"], [0.5]):
        switched = pipeline.frames(request)
    fused = two_forward(Pipeline.from_checkpoint(tiny_checkpoint))
    Adapters(fused.denoiser.transformer, allow).fuse(["a"], [0.5])
    assert not getattr(fused.denoiser.transformer, "peft_config", None)
    assert_parity(fused.frames(request), switched)


def test_the_wan_community_format_loads_the_same(tiny_checkpoint, allow, pipeline, tmp_path):
    """The original Wan key layout (`diffusion_model.blocks.N.self_attn.q...`), which diffusers'
    Wan loader converts: the same adapter in it gives the same frames."""
    from safetensors.torch import load_file, save_file

    attention = {"attn1": "self_attn", "attn2": "cross_attn"}
    projection = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o"}
    renamed = {}
    for key, value in load_file(allow.resolve("a")).items():
        block, attn, rest = key.removeprefix("transformer.blocks.").split(".", 2)
        proj, tail = rest.rsplit(".lora_", 1)
        renamed[f"diffusion_model.blocks.{block}.{attention[attn]}.{projection[proj]}.lora_{tail}"] = value
    root = tmp_path / "root"
    root.mkdir()
    save_file(renamed, root / "community.safetensors")
    (root / "loras.json").write_text(json.dumps({"adapters": {"community": "community.safetensors"}}))
    request = small_request()
    model = pipeline.denoiser.transformer
    model.delete_adapters(list(getattr(model, "peft_config", {})))
    with Adapters(model, allow).use(["a"], [0.8]):
        expected = pipeline.frames(request)
    with Adapters(model, AllowList.from_file(root / "loras.json")).use(["community"], [0.8]):
        assert_parity(pipeline.frames(request), expected)
