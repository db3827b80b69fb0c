"""The Python client: `Client(url).generate(prompt, ...)` over gRPC with tritonclient.

Torch-free: it needs only `pip install 'wan-triton[client]'`. Inputs are the contract's tensors
(each shape [1, 1]: a batch of one); options left out take the server's defaults. The entry
model follows the inputs: `image=` bytes go to `wan_i2v`, `video=` bytes to `wan_v2v`, else
`wan_t2v` (each `_stream` for `generate_stream`), unless `Client(model=...)` names one.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from wan_triton.contract import (
    INPUT_NAMES,
    INPUTS,
    LIST_INPUTS,
    PREVIEW,
    PROGRESS,
    TEXT_TO_VIDEO,
    Geometry,
    Limits,
    RequestError,
    tasks_of,
)
from wan_triton.repository import ENTRY_MODELS

if TYPE_CHECKING:
    from wan_triton.admission import Served

# Videos are MBs and raw frames can be hundreds: far past gRPC's 4 MB default.
MAX_MESSAGE_BYTES = 1 << 30
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
_SPECS = {spec.name: spec for spec in INPUTS}


class ClientError(RuntimeError):
    """The server refused or failed a request; `status` is the gRPC status name."""

    def __init__(self, message: str, status: str = "") -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Progress:
    step: int
    total: int
    elapsed_ms: float
    preview: np.ndarray | None = None  # [h, w, 3] uint8, with preview=True


@dataclass
class Result:
    video: bytes  # MP4
    seed: int
    frames: np.ndarray | None = None  # [F, H, W, 3] uint8, only when asked for


def _tensor(name: str, value: object) -> grpcclient.InferInput:
    spec = _SPECS[name]
    listed = name in LIST_INPUTS and not isinstance(value, str | bytes)
    values = list(value) if listed else [value]  # type: ignore[call-overload]
    if spec.dtype == "BYTES":
        data = np.array([[v.encode("utf-8") if isinstance(v, str) else v for v in values]], dtype=np.object_)
    else:
        data = np.array([values], dtype=spec.numpy_dtype)
    tensor = grpcclient.InferInput(name, list(data.shape), spec.dtype)
    tensor.set_data_from_numpy(data)
    return tensor


# Past its deadline the server ends a job itself; this much more covers the wait in the queue before a
# plain request starts and the VAE decode and MP4 after a stream's last step.
TIMEOUT_MARGIN_S = 120.0


class Client:
    def __init__(
        self, url: str = "127.0.0.1:8001", timeout_s: float | None = None, retries: int = 3, model: str | None = None
    ) -> None:
        """`timeout_s`: how long a plain request may take, and how long a stream may go without an answer
        (progress comes every step, so a long job never trips it). Default: the entry's own deadline
        (`limit_deadline_s` in its config, derived from the checkpoint by `serve`) plus a margin."""
        self.url, self.timeout_s, self.retries, self.model = url, timeout_s, retries, model
        self.grpc = grpcclient.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
        self._timeouts: dict[str, float] = {}
        self._served: dict[str, bool] = {}

    def timeout(self, model: str) -> float:
        if self.timeout_s is not None:
            return self.timeout_s
        if model not in self._timeouts:
            try:
                deadline = self.served_contract(model)[1].deadline_s
            except InferenceServerException:
                return Limits().deadline_s + TIMEOUT_MARGIN_S  # not known yet: the call itself will say why
            self._timeouts[model] = deadline + TIMEOUT_MARGIN_S
        return self._timeouts[model]

    def served_contract(self, model: str) -> tuple[Geometry | None, Limits]:
        """The served checkpoint's geometry (None from a repository `serve` did not write) and the limits
        of `model`, from its config: a front end validates a request as the server will before queueing it."""
        from wan_triton.serving.models import geometry_of, limits_of

        config = self.grpc.get_model_config(model, as_json=True)["config"]
        return geometry_of(config), limits_of(config)

    def served(self, model: str) -> Served | None:
        """What `model`'s server serves, as admission needs it (admission.Served), from the entry's config;
        None from a repository `serve` did not write. A front end refuses what the entry will refuse."""
        from wan_triton.serving.models import served_of

        return served_of(self.grpc.get_model_config(model, as_json=True)["config"])

    def wait_ready(self, timeout_s: float = 600.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                # Ready means every model the server loaded is (serve loads what its checkpoint serves).
                if self.grpc.is_server_ready() and (self.model is None or self.grpc.is_model_ready(self.model)):
                    return
            except InferenceServerException:
                pass
            time.sleep(0.5)
        raise ClientError(f"{self.url}: {self.model or 'the server'} not ready after {timeout_s:.0f} s", "UNAVAILABLE")

    def entry(self, options: dict, stream: bool) -> str:
        """The entry model for these inputs: plain or streaming, of `model` or of the task. Where the
        inputs suit several tasks (a video alone: V2V or VACE), the one the server serves."""
        if self.model is not None:
            pair = next((p for p in ENTRY_MODELS.values() if self.model in p), (self.model, self.model))
            return pair[int(stream)]
        tasks = [task for task in tasks_of(options) if task in ENTRY_MODELS] or [TEXT_TO_VIDEO]
        if len(tasks) > 1:
            tasks = [task for task in tasks if self._ready(ENTRY_MODELS[task][0])] or tasks
        return ENTRY_MODELS[tasks[0]][int(stream)]

    def _ready(self, model: str) -> bool:
        """Whether the server serves `model`, asked once (the repository index is not open to clients)."""
        if model not in self._served:
            try:
                self._served[model] = self.grpc.is_model_ready(model)
            except InferenceServerException:
                return False  # not reachable yet: the call itself will say why
        return self._served[model]

    def generate(self, prompt: str, frames: bool = False, **options: object) -> Result:
        """One video. `options` are contract inputs (height, width, num_frames, seed, image, ...)."""
        tensors, model = _inputs(prompt, frames, options), self.entry(options, stream=False)
        outputs = [grpcclient.InferRequestedOutput(n) for n in ("video", "seed", *(["frames"] if frames else []))]
        for attempt in range(self.retries + 1):
            try:
                answer = self.grpc.infer(model, tensors, outputs=outputs, client_timeout=self.timeout(model))
                break
            except InferenceServerException as exc:
                # Only UNAVAILABLE means the request never ran; anything else is final.
                if _client_error(exc).status != "UNAVAILABLE" or attempt == self.retries:
                    raise _client_error(exc) from None
                time.sleep(min(2.0**attempt, 10.0))
        return _result(answer, frames)

    def generate_stream(
        self,
        prompt: str,
        on_progress: Callable[[Progress], None] | None = None,
        frames: bool = False,
        stop: threading.Event | None = None,
        **options: object,
    ) -> Result:
        """One video through a streaming entry: `on_progress` after every denoising step. Leaving
        early (an exception in `on_progress`, Ctrl-C, `stop` set from another thread: ClientError
        CANCELLED) cancels the request on the server, which stops within its current step."""
        tensors, model = _inputs(prompt, frames, options), self.entry(options, stream=True)
        answers: queue.Queue = queue.Queue()
        self.grpc.start_stream(callback=lambda result, error: answers.put((result, error)))
        finished = False
        try:
            try:
                self.grpc.async_stream_infer(model, tensors, enable_empty_final_response=True)
            except InferenceServerException:
                # The stream failed before the request left (the server is down or restarting);
                # tritonclient reports why through the callback.
                finished = True
                try:
                    _, cause = answers.get(timeout=5)
                except queue.Empty:
                    cause = None
                if cause is None:
                    raise ClientError(f"{self.url}: the stream could not be opened", "UNAVAILABLE") from None
                raise _stream_error(cause) from None
            result, timeout = None, self.timeout(model)
            while True:
                answer, error = self._answer(answers, model, timeout, stop)
                if error is not None:
                    # The entries end every request with a final response; tritonclient drops the
                    # final flag of an error message, so an error is the end of the request. Never
                    # cancel after it: tritonserver 2.51 can leak a stream's state when a cancel
                    # meets a final response still being written, and the model then never unloads
                    # (docs/RELIABILITY.md, R14/R30).
                    finished = True
                    raise _stream_error(error)
                response = answer.get_response()
                names = {output.name for output in response.outputs}
                if "video" in names:
                    result = _result(answer, frames)
                elif names and on_progress is not None:
                    values = (answer.as_numpy(s.name).reshape(-1)[0].item() for s in PROGRESS)
                    preview = answer.as_numpy(PREVIEW.name)[0] if PREVIEW.name in names else None
                    on_progress(Progress(*values, preview=preview))
                if response.parameters["triton_final_response"].bool_param:
                    finished = True
                    break
            if result is None:
                raise ClientError(f"{model} ended without a video", "INTERNAL")
            return result
        finally:
            # Cancel only a request still running (Ctrl-C, our own timeout, a failing callback).
            self.grpc.stop_stream(cancel_requests=not finished)

    @staticmethod
    def _answer(answers: queue.Queue, model: str, timeout: float, stop: threading.Event | None) -> tuple:
        """The stream's next answer, waiting at most `timeout`; looking at `stop` every STOP_POLL_S."""
        waited = 0.0
        while True:
            # Answers already here come first: a final one among them means there is nothing left to
            # cancel, and a cancel after a final response is what pins an entry (R30).
            if stop is not None and stop.is_set() and answers.empty():
                raise ClientError(f"cancelled: the caller stopped the request to {model}", "CANCELLED")
            wait = min(STOP_POLL_S, timeout - waited) if stop is not None else timeout
            try:
                return answers.get(timeout=wait)
            except queue.Empty:
                waited += wait
                if waited >= timeout:
                    raise ClientError(f"no answer from {model} in {timeout:.0f} s", "DEADLINE_EXCEEDED") from None


# How often a stream with a `stop` event looks at it between answers: a cancel reaches the server
# well within the step it arrives in.
STOP_POLL_S = 0.05


def _client_error(exc: InferenceServerException) -> ClientError:
    """The server's answer as a ClientError. Triton's own words for "not now" (a model process that
    died, which serve is restarting; a model unloaded while the server stops or restarts) come
    as INTERNAL or NOT_FOUND: they are UNAVAILABLE here, so that callers retry them."""
    message = exc.message() or str(exc)
    status = str(exc.status() or "").removeprefix("StatusCode.")
    if status in ("INTERNAL", "NOT_FOUND") and any(words in message for words in _UNAVAILABLE):
        status = "UNAVAILABLE"
    return ClientError(message, status)


# Stream errors that mean "not now, try again": ours (a draining server) and Triton's own (a full
# queue, a dead model process that serve is about to reload, a model reloading, a server stopping
# or starting).
_UNAVAILABLE = (
    "shutting down",
    "Exceeds maximum queue size",
    "is not healthy",
    "is not ready",
    "Server not ready",
    "Server is stopping",
    "has no available versions",
    "is being reloaded",  # serve --parallel: a rank died; the denoiser is restarting its group
)


def _stream_error(exc: InferenceServerException) -> ClientError:
    """Triton's stream messages carry an error's text but not its code; the entries' messages
    say it: a contract violation starts with the input's name (RequestError), a stopped job with
    "cancelled"/"deadline exceeded", a draining server says it is shutting down."""
    error = _client_error(exc)
    if not error.status:
        text = str(error)
        if any(text.startswith(f"{name}: ") for name in INPUT_NAMES):
            error.status = "INVALID_ARGUMENT"
        elif text.startswith(("cancelled: ", "deadline exceeded: ")):
            error.status = "CANCELLED"
        elif any(words in text for words in _UNAVAILABLE):
            error.status = "UNAVAILABLE"
        elif "Request for unknown model" in text:  # (one with no version loaded is UNAVAILABLE above)
            error.status = "NOT_FOUND"
        else:  # a stage that failed (its name first), or the server's own fault
            error.status = "INTERNAL"
    return error


def _inputs(prompt: str, frames: bool, options: dict) -> list[grpcclient.InferInput]:
    values = {"prompt": prompt, **{k: v for k, v in options.items() if v is not None}}
    if frames:
        values["return_frames"] = True
    unknown = sorted(set(values) - set(INPUT_NAMES))
    if unknown:
        raise RequestError(unknown[0], f"is not an input; known inputs: {', '.join(INPUT_NAMES)}")
    return [_tensor(name, value) for name, value in values.items()]


def _result(answer, frames: bool) -> Result:
    video = answer.as_numpy("video").reshape(-1)[0]
    seed = int(answer.as_numpy("seed").reshape(-1)[0])
    return Result(bytes(video), seed, answer.as_numpy("frames")[0] if frames else None)
