"""The entry model against a stand-in `triton_python_backend_utils` (the live tests cover the rest).

Here, for both entries: a failing stage becomes an error response that names the stage (R13), one
request's failure does not touch its neighbours in the same execute() call, and a stream always
ends with exactly one final response, also on an unforeseen exception (R11).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fake_triton import FINAL, InferenceResponse, Request, Sender, Tensor, TritonError, install, started_with

from wan_triton.repository import DENOISER, T2V, T2V_STREAM
from wan_triton.serving.configs import all_configs

STAGE_OUTPUTS = {
    "text_encoder": lambda: {
        "prompt_embeds": np.zeros((1, 4, 8), np.float32),
        "negative_prompt_embeds": np.zeros((1, 4, 8), np.float32),
    },
    "denoiser": lambda: {"latents": np.zeros((1, 16, 1, 2, 2), np.float32)},
    "vae_decoder": lambda: {"frames": np.zeros((1, 1, 16, 16, 3), np.uint8)},
    "video_encoder": lambda: {"video": np.array([[b"mp4"]], dtype=np.object_)},
}


@pytest.fixture(params=[T2V, T2V_STREAM])
def entry(request, monkeypatch, tmp_path):
    return load_entry(request.param, monkeypatch, tmp_path)


def load_entry(name: str, monkeypatch, tmp_path):
    failing: set[str] = set()
    calls: list[str] = []

    class InferenceRequest:
        def __init__(self, model_name, requested_output_names, inputs, timeout=0) -> None:
            self.model = model_name

        def exec(self, decoupled: bool = False):
            calls.append(self.model)
            outputs = STAGE_OUTPUTS[self.model]()
            if not decoupled:
                if self.model in failing:
                    return InferenceResponse(error=TritonError("CUDA out of memory"))
                return InferenceResponse([Tensor(k, v) for k, v in outputs.items()])
            # Decoupled stages report errors in band (configs.STAGE_ERROR).
            if self.model in failing:
                outputs = {"error": np.array([[b"RuntimeError: CUDA out of memory"]], dtype=np.object_)}
            counts = {"step": 1, "total": 2}  # as the denoiser reports a step
            progress = InferenceResponse([Tensor(k, np.array([[v]], np.int32)) for k, v in counts.items()])
            return iter([progress, InferenceResponse([Tensor(k, v) for k, v in outputs.items()])])

    install(monkeypatch, InferenceRequest)

    from google.protobuf import json_format

    from wan_triton.serving.entry import EntryModel, StreamEntryModel

    checkpoint = tmp_path / "ckpt"
    (checkpoint / "vae").mkdir(parents=True)
    (checkpoint / "transformer").mkdir()
    vae = {"scale_factor_spatial": 8, "scale_factor_temporal": 4, "z_dim": 16}
    (checkpoint / "vae" / "config.json").write_text(json.dumps(vae))
    (checkpoint / "transformer" / "config.json").write_text(json.dumps({"patch_size": [1, 2, 2], "in_channels": 16}))
    (checkpoint / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    started_with(monkeypatch, checkpoint=checkpoint)
    model = StreamEntryModel() if name == T2V_STREAM else EntryModel()
    config = json_format.MessageToJson(all_configs()[name], preserving_proto_field_name=True)
    model.initialize(
        {
            "model_config": config,
            "model_name": name,
            "model_repository": str(tmp_path),
            "model_version": "1",
            "model_instance_kind": "CPU",
        }
    )
    return Entry(model, failing, calls)


class Entry:
    """Either entry, answering as a list of final responses, one per request."""

    def __init__(self, model, failing: set[str], calls: list[str]) -> None:
        self.model, self.failing, self.calls = model, failing, calls

    def __iter__(self):
        return iter((self, self.failing, self.calls))

    def execute(self, requests: list) -> list:
        from wan_triton.serving.entry import StreamEntryModel

        if not isinstance(self.model, StreamEntryModel):
            return self.model.execute(requests)
        for request in requests:
            request.sender = Sender()
        assert self.model.execute(requests) is None
        finals = []
        for request in requests:  # R11: exactly one final flag, on the last response
            flags = [flags for _, flags in request.sender.sent]
            assert flags[-1] == FINAL and FINAL not in flags[:-1]
            finals.append(request.sender.sent[-1][0])
        return finals


def prompt(text: bytes = b"a cat", **more):
    return Request(prompt=np.array([[text]], dtype=np.object_), **more)


def test_a_failing_stage_is_an_error_naming_it(entry):
    model, failing, calls = entry
    failing.add(DENOISER)
    [response] = model.execute([prompt()])
    assert response.has_error()
    assert response.error().message() == "denoiser: RuntimeError: CUDA out of memory"
    assert "vae_decoder" not in calls  # nothing runs after the failure


def test_one_bad_request_leaves_its_neighbours_alone(entry):
    model, _, calls = entry
    bad = prompt(height=np.array([[40]], np.int32))
    good, bad_response, other = model.execute([prompt(), bad, prompt(b"a dog")])
    assert not good.has_error() and not other.has_error()
    assert bad_response.error().code() == "INVALID_ARG" and "height" in bad_response.error().message()
    assert calls.count("denoiser") == 2
    assert set(good.outputs) == {"video", "seed"}  # no raw frames unless return_frames


def test_an_unexpected_failure_still_ends_the_stream(monkeypatch, tmp_path):
    """R11: an exception the entry did not foresee (a stage without its output) becomes the
    stream's final response, an error, after the progress it had relayed."""
    model, _, _ = load_entry(T2V_STREAM, monkeypatch, tmp_path)
    monkeypatch.setitem(STAGE_OUTPUTS, "vae_decoder", dict)
    request = prompt()
    request.sender = Sender()
    model.model.execute([request])
    (progress, flags), (final, last_flags) = request.sender.sent
    assert flags == 0 and "step" in progress.outputs
    assert last_flags == FINAL and final.has_error() and "KeyError" in final.error().message()


def test_each_request_counts_once_by_how_it_ended(entry):
    """The entry's metrics: a video and its frames for the success, the refusal and the stage
    failure each in their own series, the stages timed, nothing left in flight."""
    from fake_triton import MetricFamily

    model, failing, _ = entry
    name = model.model.metrics.model

    def value(metric: str, **labels: str) -> float:
        return MetricFamily.series[(metric, *sorted({"model": name, **labels}.items()))].value

    model.execute([prompt(num_frames=np.array([[9]], np.int32)), prompt(height=np.array([[40]], np.int32))])
    failing.add(DENOISER)
    model.execute([prompt()])
    made = STAGE_OUTPUTS["vae_decoder"]()["frames"].shape[1]  # what the decoder gave, not what was asked
    assert value("wan_videos_total") == 1 and value("wan_frames_total") == made
    assert value("wan_requests_rejected_total", reason="invalid_argument") == 1
    assert value("wan_requests_rejected_total", reason="shutting_down") == 0
    assert value("wan_requests_failed_total") == 1
    assert value("wan_requests_cancelled_total", reason="cancelled") == 0
    assert value("wan_requests_in_flight") == 0
    durations = MetricFamily.series[("wan_request_duration_seconds", ("model", name))].observed
    assert len(durations) == 1 and durations[0] > 0  # the success only
    stage = MetricFamily.series[("wan_stage_duration_seconds", ("model", name), ("stage", "denoiser"))]
    assert len(stage.observed) == 2  # the success's call and the failed one


def test_a_draining_server_refuses_and_counts_it(entry, monkeypatch):
    """R14: while the server drains, a new request is UNAVAILABLE (clients retry elsewhere), runs
    no stage, and counts as refused for shutting down."""
    from fake_triton import MetricFamily

    from wan_triton.serving import cancel

    model, _, calls = entry
    monkeypatch.setattr(cancel, "draining", lambda: True)
    [response] = model.execute([prompt()])
    assert response.error().code() == "UNAVAILABLE" and "shutting down" in response.error().message()
    assert calls == []
    labels = (("model", model.model.metrics.model), ("reason", "shutting_down"))
    assert MetricFamily.series[("wan_requests_rejected_total", *labels)].value == 1


def test_a_stage_refusing_while_the_server_restarts_stays_unavailable(entry):
    """A stage that cannot take the call (Triton answers UNAVAILABLE "Server not ready" while
    `serve` restarts it) is UNAVAILABLE to the client, which may retry: not a final INTERNAL."""
    from wan_triton.serving import glue

    model, _, _ = entry

    class Refusing:
        def __init__(self, **_) -> None:
            pass

        def exec(self, decoupled: bool = False):
            answer = InferenceResponse(error=TritonError("Server not ready", "UNAVAILABLE"))
            return iter([answer]) if decoupled else answer

    original = glue.pb().InferenceRequest
    glue.pb().InferenceRequest = Refusing
    try:
        [response] = model.execute([prompt()])
    finally:
        glue.pb().InferenceRequest = original
    assert response.error().code() == "UNAVAILABLE"
    assert response.error().message() == "text_encoder: Server not ready"
