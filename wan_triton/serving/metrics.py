"""Prometheus metrics of the Python models (`pb_utils.MetricFamily`), served on Triton's metrics
port beside Triton's own `nv_*` ones. Names are defined here once: the Grafana dashboard, the
HPA and the Prometheus adapter rules under deploy/ use them.

Every series carries the `model` that reports it. Series with equal labels from several
instances of one model (separate stub processes) are one series in Triton: counters and the
in-flight gauge move by increments, never by `set`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

# Seconds: a tiny video takes a fraction of one, a 720p Wan2.2 A14B one many minutes.
REQUEST_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 2400)
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # a pb_utils.MetricFamily kind: COUNTER, GAUGE or HISTOGRAM
    doc: str
    labels: tuple[str, ...] = ("model",)
    buckets: tuple[float, ...] | None = None


IN_FLIGHT = Metric("wan_requests_in_flight", "GAUGE", "Requests an entry model is working on")
REQUEST_SECONDS = Metric(
    "wan_request_duration_seconds",
    "HISTOGRAM",
    "Seconds from an entry model taking a request to its video (successful requests)",
    buckets=REQUEST_BUCKETS,
)
STAGE_SECONDS = Metric(
    "wan_stage_duration_seconds",
    "HISTOGRAM",
    "Seconds of one stage call as its entry model saw it (its queue included; the denoiser's also the progress "
    "relayed to a streaming client)",
    ("model", "stage"),
    STAGE_BUCKETS,
)
STEPS_TOTAL = Metric("wan_denoising_steps_total", "COUNTER", "Denoising steps run (one per job and step)")
VIDEOS_TOTAL = Metric("wan_videos_total", "COUNTER", "Videos generated")
FRAMES_TOTAL = Metric("wan_frames_total", "COUNTER", "Frames of the videos generated")
REJECTED_TOTAL = Metric(
    "wan_requests_rejected_total",
    "COUNTER",
    "Requests an entry refused before any stage ran (Triton's own, a full queue: nv_inference_request_failure)",
    ("model", "reason"),
)
CANCELLED_TOTAL = Metric(
    "wan_requests_cancelled_total",
    "COUNTER",
    "Requests stopped by their client (a cancel or the client's timeout: cancelled) or past the server's deadline_s",
    ("model", "reason"),
)
FAILED_TOTAL = Metric("wan_requests_failed_total", "COUNTER", "Requests that failed in a stage or on a bug")
METRICS = (
    IN_FLIGHT,
    REQUEST_SECONDS,
    STAGE_SECONDS,
    STEPS_TOTAL,
    VIDEOS_TOTAL,
    FRAMES_TOTAL,
    REJECTED_TOTAL,
    CANCELLED_TOTAL,
    FAILED_TOTAL,
)


class Outcome(Enum):
    """How a request ended (glue.per_request decides)."""

    OK = "ok"
    INVALID_ARGUMENT = "invalid_argument"
    SHUTTING_DOWN = "shutting_down"
    CANCELLED = "cancelled"
    DEADLINE = "deadline"
    FAILED = "failed"


# The series each outcome counts in (a success: its duration, in REQUEST_SECONDS).
COUNTED: dict[Outcome, tuple[Metric, dict[str, str]]] = {
    Outcome.INVALID_ARGUMENT: (REJECTED_TOTAL, {"reason": Outcome.INVALID_ARGUMENT.value}),
    Outcome.SHUTTING_DOWN: (REJECTED_TOTAL, {"reason": Outcome.SHUTTING_DOWN.value}),
    Outcome.CANCELLED: (CANCELLED_TOTAL, {"reason": Outcome.CANCELLED.value}),
    Outcome.DEADLINE: (CANCELLED_TOTAL, {"reason": Outcome.DEADLINE.value}),
    Outcome.FAILED: (FAILED_TOTAL, {}),
}


class Recorder:
    """One model's series, made on first use (`prime` makes them at load, so they read 0 before
    the first request and dashboards and the HPA see them from the start)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._families: dict[str, object] = {}
        self._series: dict[tuple, object] = {}

    def series(self, metric: Metric, **labels: str):
        key = (metric.name, *sorted(labels.items()))
        if key not in self._series:
            import triton_python_backend_utils as utils  # only inside a backend stub

            if metric.name not in self._families:
                kind = getattr(utils.MetricFamily, metric.kind)
                self._families[metric.name] = utils.MetricFamily(name=metric.name, description=metric.doc, kind=kind)
            options = {"buckets": list(metric.buckets)} if metric.buckets else {}
            self._series[key] = self._families[metric.name].Metric(labels={"model": self.model, **labels}, **options)
        return self._series[key]

    def add(self, metric: Metric, value: float = 1.0, **labels: str) -> None:
        self.series(metric, **labels).increment(value)

    def observe(self, metric: Metric, seconds: float, **labels: str) -> None:
        self.series(metric, **labels).observe(seconds)

    def prime(self, *metrics: Metric) -> None:
        for metric in metrics:
            for counted, labels in COUNTED.values():
                if counted is metric:
                    self.series(metric, **labels)
            if metric.labels == ("model",):
                self.series(metric)

    def started(self) -> None:
        self.add(IN_FLIGHT)

    def finished(self, outcome: Outcome, seconds: float) -> None:
        """A request ended (`started` before): a success's duration, or the rejection, cancel or
        failure counted."""
        self.add(IN_FLIGHT, -1)
        if outcome is Outcome.OK:
            self.observe(REQUEST_SECONDS, seconds)
        else:
            metric, labels = COUNTED[outcome]
            self.add(metric, **labels)
