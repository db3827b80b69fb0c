"""A stand-in for `triton_python_backend_utils` (which exists only inside a backend stub), for
unit tests of one model's code. The live-server tests cover the real one."""

from __future__ import annotations

import sys
import types

import numpy as np

FINAL = 1  # stands for TRITONSERVER_RESPONSE_COMPLETE_FINAL


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class TritonError:
    INTERNAL, INVALID_ARG, UNAVAILABLE, CANCELLED = "INTERNAL", "INVALID_ARG", "UNAVAILABLE", "CANCELLED"

    def __init__(self, message: str, code: str = "INTERNAL") -> None:
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> str:
        return self._code


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

    def get_response_sender(self):
        return self.sender


class Sender:
    """Records what a decoupled model sends: (response, flags)."""

    def __init__(self) -> None:
        self.sent: list[tuple[object, int]] = []

    def send(self, response=None, flags: int = 0) -> None:
        self.sent.append((response, flags))

    def is_cancelled(self) -> bool:
        return False


def install(monkeypatch, inference_request=None) -> types.ModuleType:
    """Put the stand-in in sys.modules for the test (BLS calls go to `inference_request`)."""
    fake = types.ModuleType("triton_python_backend_utils")
    fake.Tensor, fake.TritonError, fake.InferenceResponse = Tensor, TritonError, InferenceResponse
    fake.InferenceRequest = inference_request
    fake.TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL
    fake.get_input_tensor_by_name = lambda request, name: request.tensors.get(name)
    fake.get_output_tensor_by_name = lambda response, name: Tensor(name, response.outputs[name])
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    return fake
