"""The denoiser model's batching against a stand-in pb_utils, with the real tiny checkpoint:
compatible requests run as one batch and each gets its own latents (as computed alone, within
float rounding), progress and cancellation; incompatible ones run apart."""

from __future__ import annotations

import numpy as np
import pytest
from fake_triton import FINAL, Request, Sender, install, started_with
from google.protobuf import json_format

from wan_triton.repository import DENOISER
from wan_triton.serving.configs import all_configs


def load(monkeypatch, checkpoint, **settings):
    """The denoiser model (batches up to 4) with the stand-in pb_utils, and its text width."""
    install(monkeypatch)
    started_with(monkeypatch, checkpoint=checkpoint, **settings)
    from wan_triton.serving.denoiser import DenoiserModel

    model = DenoiserModel()
    config = json_format.MessageToJson(all_configs(denoiser_batch=4)[DENOISER], preserving_proto_field_name=True)
    model.initialize({"model_config": config, "model_name": DENOISER, "model_repository": "/", "model_version": "1"})
    return model, model.denoiser.transformer.config.text_dim


@pytest.fixture(scope="module")
def denoiser(tiny_checkpoint):
    monkeypatch = pytest.MonkeyPatch()
    yield load(monkeypatch, tiny_checkpoint)
    monkeypatch.undo()


class Cancelling(Request):
    """A request whose client leaves after `after` progress responses."""

    def __init__(self, after: int, **values) -> None:
        super().__init__(**values)
        self.after = after

    def is_cancelled(self) -> bool:
        return len(self.sender.sent) >= self.after


def job(width: int, seed: int, steps: int = 3, kind=Request, **extra):
    rng = np.random.default_rng(seed)
    request = kind(
        **extra,
        prompt_embeds=rng.standard_normal((1, 8, width)).astype(np.float32),
        negative_prompt_embeds=rng.standard_normal((1, 8, width)).astype(np.float32),
        height=np.array([[32]], np.int32),
        width=np.array([[48]], np.int32),
        num_frames=np.array([[5]], np.int32),
        num_inference_steps=np.array([[steps]], np.int32),
        guidance_scale=np.array([[5.0]], np.float32),
        guidance_scale_2=np.array([[np.nan]], np.float32),
        flow_shift=np.array([[np.nan]], np.float32),
        seed=np.array([[seed]], np.int64),
        cache_method=np.array([[b"none"]], np.object_),
        cache_threshold=np.array([[0.0]], np.float32),
        cache_interval=np.array([[0]], np.int32),
    )
    request.sender = Sender()
    return request


def answers(model, requests) -> list:
    model.execute(requests)
    finals = []
    for request in requests:
        flags = [flags for _, flags in request.sender.sent]
        assert flags[-1] == FINAL and FINAL not in flags[:-1]
        finals.append(request.sender.sent[-1][0].outputs)
    return finals


def test_compatible_requests_batch_and_each_gets_its_own_latents(denoiser):
    model, width = denoiser
    alone = [answers(model, [job(width, seed)])[0]["latents"] for seed in (1, 2)]
    calls = []
    handle = model.denoiser.transformer.register_forward_hook(
        lambda _m, args, kwargs, out: calls.append(1), with_kwargs=True
    )
    try:
        together = answers(model, [job(width, 1), job(width, 2), job(width, 3, steps=2)])
    finally:
        handle.remove()
    assert len(calls) == 3 + 2  # one forward a step for the batch of two, then the other alone
    for mine, solo in zip(together, alone, strict=False):
        assert np.abs(mine["latents"] - solo).max() < 1e-4
    assert not np.allclose(together[0]["latents"], together[1]["latents"])  # seeds stay apart


def test_a_cancelled_job_leaves_its_batch_running(denoiser):
    model, width = denoiser
    leaving, staying = job(width, 1, steps=4, kind=Cancelling, after=2), job(width, 2, steps=4)
    stopped, finished = answers(model, [leaving, staying])
    assert "error" in stopped and b"Cancelled" in stopped["error"].reshape(-1)[0]
    assert "latents" in finished and len(staying.sender.sent) == 4 + 1


def test_requests_with_other_adapters_never_share_a_batch(tiny_checkpoint, loras):
    """Adapters are part of what makes requests compatible; the one without adapters gets the
    base weights' latents even right after one with them, in the same dynamic batch."""
    monkeypatch = pytest.MonkeyPatch()
    try:
        model, width = load(monkeypatch, tiny_checkpoint, loras=loras)
        adapted = {"lora_names": np.array([[b"a"]], np.object_), "lora_scales": np.array([[0.7]], np.float32)}
        plain_alone = answers(model, [job(width, 1)])[0]["latents"]
        adapted_alone = answers(model, [job(width, 2, **adapted)])[0]["latents"]
        calls = []
        handle = model.denoiser.transformer.register_forward_hook(lambda *_: calls.append(1))
        try:
            first, second = answers(model, [job(width, 2, **adapted), job(width, 1)])
        finally:
            handle.remove()
        assert len(calls) == 3 + 3  # two batches of one, not one of two
        assert np.array_equal(first["latents"], adapted_alone) and np.array_equal(second["latents"], plain_alone)
    finally:
        monkeypatch.undo()


def test_a_fused_deployment_runs_its_adapters_without_switching(tiny_checkpoint, loras):
    """`serve --fuse-lora a:0.7`: merged at load, so a request without adapters gets what a
    request with `a` at 0.7 gets on a switching server, and no adapter layer is left."""
    monkeypatch = pytest.MonkeyPatch()
    try:
        switching, width = load(monkeypatch, tiny_checkpoint, loras=loras)
        adapted = {"lora_names": np.array([[b"a"]], np.object_), "lora_scales": np.array([[0.7]], np.float32)}
        expected = answers(switching, [job(width, 4, **adapted)])[0]["latents"]
        fused, _ = load(monkeypatch, tiny_checkpoint, loras=loras, fuse_loras="a:0.7")
        assert not getattr(fused.denoiser.transformer, "peft_config", None)
        assert np.abs(answers(fused, [job(width, 4)])[0]["latents"] - expected).max() < 1e-4
    finally:
        monkeypatch.undo()
