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
    adapters = Adapters(pipeline.denoiser.experts(), allow)
    with adapters.use(list(SCALES), list(SCALES.values())):
        ours = pipeline.frames(request)
    assert np.array_equal(pipeline.frames(request), base)  # no leak into the next call
    assert np.abs(ours - base).max() > 1e-3  # the adapters do something

    pipe = WanPipeline.from_pretrained(tiny_checkpoint)
    for name in SCALES:
        pipe.load_lora_weights(str(allow.resolve(name)["transformer"]), adapter_name=name)
    pipe.set_adapters(list(SCALES), list(SCALES.values()))
    assert_parity(ours, diffusers_frames(pipe, request))


def test_least_recently_used_goes_first(allow, pipeline):
    model = pipeline.denoiser.transformer
    model.delete_adapters(list(getattr(model, "peft_config", {})))  # from the tests before
    adapters = Adapters(pipeline.denoiser.experts(), allow, capacity=1)
    with adapters.use(["a"], [1.0]):
        pass
    with adapters.use(["b"], [1.0]):
        assert list(adapters.loaded) == ["b"]
        assert set(pipeline.denoiser.transformer.peft_config) == {"b"}
    with pytest.raises(RequestError, match="at most 1"), adapters.use(["a", "b"], [1.0, 1.0]):
        pass
    model.delete_adapters(list(adapters.loaded))


def test_fused_equals_switched(tiny_checkpoint, allow, pipeline):
    request = small_request()
    with Adapters(pipeline.denoiser.experts(), allow).use(["a"], [0.5]):
        switched = pipeline.frames(request)
    fused = two_forward(Pipeline.from_checkpoint(tiny_checkpoint))
    Adapters(fused.denoiser.experts(), allow).fuse(["a"], [0.5])
    assert not getattr(fused.denoiser.transformer, "peft_config", None)
    assert_parity(fused.frames(request), switched)


def test_the_wan_community_format_loads_the_same(tiny_checkpoint, allow, pipeline, tmp_path):
    """The original Wan key layout (`diffusion_model.blocks.N.self_attn.q...`), which diffusers'
    Wan loader converts: the same adapter in it gives the same frames."""
    from safetensors.torch import load_file, save_file

    attention = {"attn1": "self_attn", "attn2": "cross_attn"}
    projection = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o"}
    renamed = {}
    for key, value in load_file(allow.resolve("a")["transformer"]).items():
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
    with Adapters(pipeline.denoiser.experts(), allow).use(["a"], [0.8]):
        expected = pipeline.frames(request)
    with Adapters(pipeline.denoiser.experts(), AllowList.from_file(root / "loras.json")).use(["community"], [0.8]):
        assert_parity(pipeline.frames(request), expected)


@pytest.fixture(scope="module")
def experts(two_experts):
    return two_forward(Pipeline.from_checkpoint(two_experts))


def test_adapters_on_both_experts_match_diffusers(two_experts, expert_loras, experts):
    """A Wan2.2 A14B pair (high-noise file on `transformer`, low-noise on `transformer_2`) gives
    diffusers' frames for `load_lora_weights(..., load_into_transformer_2=True)` + `set_adapters`;
    each expert's file matters, and the next request runs the base weights exactly."""
    from diffusers import WanPipeline

    allow = AllowList.from_file(expert_loras)
    request = small_request(guidance_scale_2=3.0)
    base = experts.frames(request)
    adapters = Adapters(experts.denoiser.experts(), allow)
    found = {}
    for name in ("pair", "high", "low"):
        with adapters.use([name], [0.8]):
            found[name] = experts.frames(request)
    assert np.array_equal(experts.frames(request), base)
    assert set(experts.denoiser.transformer_2.peft_config) == {"pair", "low"}  # "high" never touched it
    for one, other in [("pair", "high"), ("pair", "low"), ("high", "low")]:
        assert np.abs(found[one] - found[other]).max() > 1e-3, (one, other)

    files = allow.resolve("pair")
    pipe = WanPipeline.from_pretrained(two_experts)
    pipe.load_lora_weights(str(files["transformer"]), adapter_name="pair")
    pipe.load_lora_weights(str(files["transformer_2"]), adapter_name="pair", load_into_transformer_2=True)
    pipe.set_adapters(["pair"], [0.8])
    assert_parity(found["pair"], diffusers_frames(pipe, request))


def test_adapters_on_two_experts_evict_and_fuse_on_both(two_experts, expert_loras, experts):
    allow = AllowList.from_file(expert_loras)
    adapters = Adapters(experts.denoiser.experts(), allow, capacity=1)
    with adapters.use(["pair"], [1.0]):
        pass
    with adapters.use(["both"], [0.5]):
        switched = experts.frames(small_request())
        assert list(adapters.loaded) == ["both"]
        assert all(set(model.peft_config) == {"both"} for model in experts.denoiser.transformers())
    fused = two_forward(Pipeline.from_checkpoint(two_experts))
    Adapters(fused.denoiser.experts(), allow).fuse(["both"], [0.5])
    assert not any(getattr(model, "peft_config", None) for model in fused.denoiser.transformers())
    assert_parity(fused.frames(small_request()), switched)


def test_an_adapter_for_an_absent_expert_is_refused(expert_loras, pipeline):
    allow = AllowList.from_file(expert_loras)
    with pytest.raises(RequestError, match="loads into transformer_2, which this checkpoint does not have"):
        Adapters(pipeline.denoiser.experts(), allow).use(["low"], [1.0]).__enter__()
    assert set(allow.problems(("transformer",))) == {"pair", "low", "both"}


def test_a_malformed_allow_list_entry_is_refused_at_start(tmp_path):
    for entry in ({"transformer_3": "a.safetensors"}, {}, ["a.safetensors"]):
        (tmp_path / "loras.json").write_text(json.dumps({"adapters": {"bad": entry}}))
        with pytest.raises(ValueError, match="adapter 'bad': expected a file or"):
            AllowList.from_file(tmp_path / "loras.json")
