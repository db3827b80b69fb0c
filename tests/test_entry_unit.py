"""The entry model against a stand-in `triton_python_backend_utils` (the live tests cover the rest).

Here: a failing stage becomes an error response that names the stage (R13), and one request's
failure does not touch its neighbours in the same execute() call.
"""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from wan_triton.repository import DENOISER, T2V
from wan_triton.serving.configs import all_configs


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class TritonError:
    INTERNAL, INVALID_ARG = "INTERNAL", "INVALID_ARG"

    def __init__(self, message: str, code: str = "INTERNAL") -> None:
        self._message, self.code = message, code

    def message(self) -> str:
        return self._message


class InferenceResponse:
    def __init__(self, output_tensors=None, error=None) -> None:
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors or []}
        self._error = error

    def has_error(self) -> bool:
        return self._error is not None

    def output_tensors(self) -> list[Tensor]:
        return [Tensor(name, array) for name, array in self.outputs.items()]

    def error(self):
        return self._error


class Request:
    def __init__(self, **values) -> None:
        self.tensors = {k: Tensor(k, v) for k, v in values.items()}

    def is_cancelled(self) -> bool:
        return False


STAGE_OUTPUTS = {
    "text_encoder": lambda: {
        "prompt_embeds": np.zeros((1, 4, 8), np.float32),
        "negative_prompt_embeds": np.zeros((1, 4, 8), np.float32),
    },
    "denoiser": lambda: {"latents": np.zeros((1, 16, 1, 2, 2), np.float32)},
    "vae_decoder": lambda: {"frames": np.zeros((1, 1, 16, 16, 3), np.uint8)},
    "video_encoder": lambda: {"video": np.array([[b"mp4"]], dtype=np.object_)},
}


@pytest.fixture
def entry(monkeypatch, tmp_path):
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
            progress = InferenceResponse([Tensor("step", np.array([[1]], np.int32))])
            return iter([progress, InferenceResponse([Tensor(k, v) for k, v in outputs.items()])])

    fake = types.ModuleType("triton_python_backend_utils")
    fake.Tensor, fake.TritonError, fake.InferenceResponse, fake.InferenceRequest = (
        Tensor,
        TritonError,
        InferenceResponse,
        InferenceRequest,
    )
    fake.get_input_tensor_by_name = lambda request, name: request.tensors.get(name)
    fake.get_output_tensor_by_name = lambda response, name: Tensor(name, response.outputs[name])
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)

    from google.protobuf import json_format

    from wan_triton.serving.entry import TextToVideoModel

    checkpoint = tmp_path / "ckpt"
    (checkpoint / "vae").mkdir(parents=True)
    (checkpoint / "transformer").mkdir()
    (checkpoint / "vae" / "config.json").write_text(json.dumps({"scale_factor_spatial": 8, "scale_factor_temporal": 4}))
    (checkpoint / "transformer" / "config.json").write_text(json.dumps({"patch_size": [1, 2, 2]}))
    monkeypatch.setenv("WAN_TRITON_CHECKPOINT", str(checkpoint))
    model = TextToVideoModel()
    config = json_format.MessageToJson(all_configs()[T2V], preserving_proto_field_name=True)
    model.initialize(
        {
            "model_config": config,
            "model_name": T2V,
            "model_repository": str(tmp_path),
            "model_version": "1",
            "model_instance_kind": "CPU",
        }
    )
    return model, failing, calls


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
    assert bad_response.error().code == "INVALID_ARG" and "height" in bad_response.error().message()
    assert calls.count("denoiser") == 2
    assert set(good.outputs) == {"video", "seed"}  # no raw frames unless return_frames
