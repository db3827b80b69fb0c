"""Speed options that need no server: the text cache (exact, always on) and the transformer's deployment
options (`serve --compile`, `serve --quantize`), in process on tiny checkpoints. Served: tests/test_trained.py."""

from __future__ import annotations

import dataclasses
from copy import deepcopy

import pytest
import torch

from wan_triton.acceleration import Acceleration, AccelerationError
from wan_triton.contract import RequestError
from wan_triton.parallel import Parallel
from wan_triton.pipeline.denoise import Denoiser, Guide
from wan_triton.pipeline.latents import initial_latents

STEPS = 5


def _denoiser(checkpoint) -> Denoiser:
    from wan_triton.pipeline.checkpoint import Checkpoint

    return Denoiser.from_checkpoint(Checkpoint.open(checkpoint))


def _run(denoiser: Denoiser, frames: int = 3, side: int = 4, guide: Guide | None = None) -> torch.Tensor:
    width = denoiser.transformer.config.text_dim
    text = torch.randn(2, 512, width, generator=torch.Generator().manual_seed(1))
    noise = initial_latents(0, (1, 16, frames, side, side), "cpu")
    return denoiser(noise, text[:1], text[1:], STEPS, 5.0, guide=guide)


def _count_context_projections(denoiser: Denoiser) -> dict[str, int]:
    """Counts the real work of every block's cross-attention key projection (a counter put in place
    of its forward: the text cache's hook, when on, wraps the counter)."""
    counts: dict[str, int] = {}
    for expert, model in denoiser.experts().items():
        for name, module in model.named_modules():
            if name.endswith("attn2.to_k"):
                key, original = f"{expert}.{name}", module.forward

                def counted(*args, key=key, original=original, **kwargs):
                    counts[key] = counts.get(key, 0) + 1
                    return original(*args, **kwargs)

                module.forward = counted
    return counts


@pytest.mark.parametrize("fixture", ["tiny_checkpoint", "two_experts", "i2v_checkpoint"])
@pytest.mark.parametrize("batch_cfg", [True, False])
def test_the_text_cache_is_exact_and_projects_the_text_once_a_request(request, fixture, batch_cfg):
    """Bit for bit the output without it (Wan2.1, Wan2.2's two experts, Wan2.1 I2V whose CLIP tokens are
    joined to the text anew every step; guidance batched or not), with each block's text keys computed
    once per request and context instead of once per step, and nothing kept after the request."""
    denoiser = dataclasses.replace(_denoiser(request.getfixturevalue(fixture)), batch_cfg=batch_cfg)
    guide = None
    if fixture == "i2v_checkpoint":
        config = denoiser.transformer.config
        draw = torch.Generator().manual_seed(2)
        guide = Guide(
            image_latents=torch.randn(1, 16, 3, 4, 4, generator=draw),
            image_embeds=torch.randn(1, 257, config.image_dim, generator=draw),
        )
    counts = _count_context_projections(denoiser)
    uncached = _run(dataclasses.replace(denoiser, cache_text=False), guide=guide)
    per_step = dict(counts)
    counts.clear()
    cached = _run(denoiser, guide=guide)
    assert torch.equal(cached, uncached)
    contexts = 1 if batch_cfg else 2  # the joined batch, or the positive and the negative prompt apart
    assert per_step and set(counts) == set(per_step)
    for block, count in counts.items():
        assert count == contexts and per_step[block] >= count, block  # Wan2.2: an expert may run one step
    assert sum(per_step.values()) > sum(counts.values())
    counts.clear()
    assert torch.equal(_run(denoiser, guide=guide), cached)  # a second request computes its own once more
    assert set(counts.values()) == {contexts}
    for model in denoiser.transformers():
        assert not any(module._diffusers_hook.hooks for module in model.modules() if hasattr(module, "_diffusers_hook"))


def test_acceleration_settings_travel_and_refuse_what_they_cannot_run():
    for text in ("", "compile", "quantize=int8", "quantize=int8-weights", "compile,quantize=fp8"):
        assert str(Acceleration.parse(text)) == text
    assert Acceleration.parse("quantize=int8").compiled and not Acceleration().compiled
    with pytest.raises(AccelerationError, match="unknown transformer option 'quantize=int4'"):
        Acceleration.parse("quantize=int4")
    int8 = Acceleration(quantize="int8")
    with pytest.raises(AccelerationError, match="--quantize does not combine with --loras"):
        int8.check(Parallel(), loras=True)
    with pytest.raises(AccelerationError, match="--compile does not combine with --parallel"):
        Acceleration(compile=True).check(Parallel(ulysses=2), loras=False)
    if not torch.cuda.is_available():
        with pytest.raises(AccelerationError, match="fp8 needs a GPU with float8"):
            Acceleration(quantize="fp8").check(Parallel(), loras=False)
    int8.check(Parallel(), loras=False)
    Acceleration().check(Parallel(ulysses=2), loras=True)  # nothing compiled: nothing to refuse
    int8.check_request("none")
    with pytest.raises(RequestError, match="step caching is not supported with a compiled transformer"):
        int8.check_request("first_block")


def test_compiled_and_quantized_transformers_warm_up_once_for_every_shape(tiny_checkpoint):
    """serve --compile keeps the output (float32, one dynamic graph); --quantize int8 changes it a little;
    after the one-step warm-up the denoiser stage runs at load, other sizes and frame counts compile nothing."""
    from torch._dynamo.utils import counters

    exact = _denoiser(tiny_checkpoint)
    reference = {(f, s): _run(exact, f, s) for f, s in ((3, 4), (2, 6))}
    for option in (Acceleration(compile=True), Acceleration(quantize="int8"), Acceleration(quantize="int8-weights")):
        denoiser = dataclasses.replace(exact, transformer=deepcopy(exact.transformer))
        option.apply(denoiser)
        assert not denoiser.cache_text  # its hooks would sit inside the compiled blocks
        torch._dynamo.reset()
        _run(denoiser, 2, 4)  # the warm-up: no dimension of 1, a guidance batch of two
        graphs = counters["stats"]["unique_graphs"]
        for (frames, side), expected in reference.items():
            out = _run(denoiser, frames, side)
            error = float((out - expected).norm() / expected.norm())
            if option.quantize == "int8":
                assert 0 < error < 0.1, (option, error)
            elif option.quantize:  # weights alone: closer
                assert 0 < error < 0.02, (option, error)
            else:
                assert error < 1e-5, (option, error)
        assert counters["stats"]["unique_graphs"] == graphs, option
