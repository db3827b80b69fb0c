"""A stand-in for `triton_python_backend_utils` (which exists only inside a backend stub), for
unit tests of one model's code. The live-server tests cover the real one."""

from __future__ import annotations

import sys
import types
from typing import ClassVar

import numpy as np

from wan_triton.serving.settings import ServeSettings

FINAL = 1  # stands for TRITONSERVER_RESPONSE_COMPLETE_FINAL
KEY = "test-stage-key"  # the stage key the stand-in server was started with


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
    """A request as an entry sends it to a stage: with the stage key unless `stage_key` says
    otherwise (None: without one)."""

    def __init__(self, **values) -> None:
        values.setdefault("stage_key", np.array([[KEY.encode()]], dtype=np.object_))
        self.tensors = {k: Tensor(k, v) for k, v in values.items() if v is not None}

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


class MetricFamily:
    """Records every series by (family name, sorted labels): counters and gauges as a value,
    histograms as the list of observations. `MetricFamily.series` holds them all."""

    COUNTER, GAUGE, HISTOGRAM = "COUNTER", "GAUGE", "HISTOGRAM"
    series: ClassVar[dict[tuple, Metric]] = {}

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.kind = name, kind

    def Metric(self, labels: dict[str, str], buckets: list[float] | None = None) -> Metric:
        assert (buckets is not None) == (self.kind == self.HISTOGRAM), "buckets are for histograms only"
        return self.series.setdefault((self.name, *sorted(labels.items())), Metric())


class Metric:
    def __init__(self) -> None:
        self.value, self.observed = 0.0, []

    def increment(self, value: float) -> None:
        self.value += value

    def observe(self, value: float) -> None:
        self.observed.append(value)


class Logger:
    logged: ClassVar[list[str]] = []

    @classmethod
    def log_error(cls, message: str) -> None:
        cls.logged.append(message)

    log_warn = log_info = log_error


def started_with(monkeypatch, **settings) -> ServeSettings:
    """What the stand-in server's `serve` decided (serving/settings.py): these settings and KEY, as a
    stub reads them from its run folder."""
    chosen = ServeSettings(stage_key=KEY, **settings)
    monkeypatch.setattr(ServeSettings, "current", staticmethod(lambda: chosen))
    return chosen


def install(monkeypatch, inference_request=None) -> types.ModuleType:
    """Put the stand-in in sys.modules for the test (BLS calls go to `inference_request`)."""
    fake = types.ModuleType("triton_python_backend_utils")
    fake.Tensor, fake.TritonError, fake.InferenceResponse = Tensor, TritonError, InferenceResponse
    fake.InferenceRequest = inference_request
    fake.MetricFamily, fake.Logger = MetricFamily, Logger
    MetricFamily.series, Logger.logged = {}, []
    started_with(monkeypatch)
    fake.TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL
    fake.get_input_tensor_by_name = lambda request, name: request.tensors.get(name)
    fake.get_output_tensor_by_name = lambda response, name: Tensor(name, response.outputs[name])
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    return fake
