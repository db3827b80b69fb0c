"""The thin layer between Triton's Python backend and the core: tensors in, tensors or errors out.

`triton_python_backend_utils` exists only inside a backend stub, so it is imported lazily.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import locale
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wan_triton.contract import RequestError
from wan_triton.serving.metrics import Outcome
from wan_triton.serving.settings import CHECKPOINT_ENV, STAGE_KEY_ENV, ServeSettings

if TYPE_CHECKING:
    from wan_triton.serving.metrics import Recorder


def pb():
    import triton_python_backend_utils as pb_utils

    return pb_utils


class StageError(RuntimeError):
    """A stage (BLS call) that answered with an error; its message names the stage. `code` is
    UNAVAILABLE when the stage could not take the call (the server is stopping or restarting): the
    client may retry that elsewhere; anything else is INTERNAL."""

    def __init__(self, message: str, code: str = "INTERNAL") -> None:
        super().__init__(message)
        self.code = code


def bls_error(model: str, failure) -> StageError:
    """A BLS call's error response as a StageError naming `model`, keeping UNAVAILABLE."""
    unavailable = failure.code() == pb().TritonError.UNAVAILABLE
    return StageError(f"{model}: {failure.message()}", "UNAVAILABLE" if unavailable else "INTERNAL")


class Cancelled(RuntimeError):
    """The client went away (stream cancel, deadline): stop and answer CANCELLED."""


class ShuttingDown(RuntimeError):
    """The server is draining: it finishes its jobs and starts none (UNAVAILABLE, retry elsewhere)."""


class DeadlineExceeded(Cancelled):
    """The job ran past the server's deadline. The Python backend has no DEADLINE_EXCEEDED code:
    it answers CANCELLED with a message that says which."""


class CallerRefused(RuntimeError):
    """A stage called by anyone but an entry model: INVALID_ARGUMENT naming the key input (the
    Python backend has no PERMISSION_DENIED), before any work."""


class ModelContext:
    """What `initialize(args)` tells a model: its config, folder, device and checkpoint."""

    def __init__(self, args: dict) -> None:
        _utf8_text()
        self.config = json.loads(args["model_config"])
        self.name = args["model_name"]
        self.folder = Path(args["model_repository"]) / args["model_version"]
        # The instance group decides: `serve` writes KIND_GPU for heavy models when it sees a GPU.
        gpu = args.get("model_instance_kind") == "GPU"
        self.device = f"cuda:{args.get('model_instance_device_id', '0')}" if gpu else "cpu"

    def parameter(self, key: str, default: str = "") -> str:
        return self.config.get("parameters", {}).get(key, {}).get("string_value", default)

    def checkpoint(self) -> Path:
        path = self.parameter("checkpoint") or ServeSettings.current().checkpoint
        if not path:
            raise RuntimeError(f"no checkpoint: start the server with `wan-triton serve` (or set {CHECKPOINT_ENV})")
        return Path(path)


def _utf8_text() -> None:
    """The stub's embedded Python configures no locale (unlike the `python` command, which coerces C to
    UTF-8), so text files opened without an encoding read as ASCII and fail on the first other byte
    (seen: torch.compile's inductor templates under `serve --compile`; PYTHONUTF8 is ignored there too)."""
    if locale.getpreferredencoding(False).lower().replace("-", "") != "utf8":
        with contextlib.suppress(locale.Error):
            locale.setlocale(locale.LC_CTYPE, "C.UTF-8")


def stage_key() -> str:
    key = ServeSettings.current().stage_key
    if not key:
        raise RuntimeError(f"no stage key: start the server with `wan-triton serve` (or set {STAGE_KEY_ENV})")
    return key


def check_caller(request) -> None:
    """Refuse a stage call that did not come from an entry model of this server (R27)."""
    from wan_triton.serving.models import STAGE_KEY

    tensor = pb().get_input_tensor_by_name(request, STAGE_KEY.name)
    given = tensor.as_numpy().reshape(-1) if tensor is not None else np.array([])
    value = given[0] if given.size == 1 and isinstance(given[0], bytes) else b""
    if not hmac.compare_digest(value, stage_key().encode()):
        raise CallerRefused(
            f"{STAGE_KEY.name}: stages answer only this server's entry models; call an entry (wan_t2v, ...)"
        )


def inputs(request, names: Iterable[str]) -> dict[str, np.ndarray]:
    """The named inputs of a request that are present, as numpy arrays."""
    found = {}
    for name in names:
        tensor = pb().get_input_tensor_by_name(request, name)
        if tensor is not None:
            found[name] = tensor.as_numpy()
    return found


def response(outputs: dict[str, np.ndarray]):
    utils = pb()
    return utils.InferenceResponse([utils.Tensor(name, array) for name, array in outputs.items()])


def error(message: str, code: str = "INTERNAL"):
    utils = pb()
    return utils.InferenceResponse(error=utils.TritonError(message, getattr(utils.TritonError, code)))


def failure(exc: Exception) -> tuple[Outcome, object]:
    """How a request that raised `exc` ends: its outcome and its error response. (A RequestError
    is a refusal: INVALID_ARGUMENT before any work.) The message names the exception's kind and
    says what failed; it never carries a traceback."""
    if isinstance(exc, RequestError | CallerRefused):
        return Outcome.INVALID_ARGUMENT, error(str(exc), "INVALID_ARG")
    if isinstance(exc, ShuttingDown):
        return Outcome.SHUTTING_DOWN, error(str(exc), "UNAVAILABLE")
    if isinstance(exc, DeadlineExceeded):
        return Outcome.DEADLINE, error(f"deadline exceeded: {exc}", "CANCELLED")
    if isinstance(exc, Cancelled):
        return Outcome.CANCELLED, error(f"cancelled: {exc}", "CANCELLED")
    if isinstance(exc, StageError):
        return Outcome.FAILED, error(str(exc), exc.code)
    return Outcome.FAILED, error(redacted(exc))  # a bug or a runtime failure


# Absolute file-system paths (the checkpoint's, the repository's, site-packages) in an exception's
# text say more about the host than a client needs (issue 13, item 9); the server log keeps them.
_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.+-]+/)+[\w.+-]*")


def redacted(exc: BaseException) -> str:
    """An exception as a client may see it: its kind and message, with file paths cut."""
    message = f"{type(exc).__name__}: {exc}"
    cut = _PATH.sub("<path>", message)
    if cut != message:
        pb().Logger.log_error(f"failed: {message}")
    return cut


def per_request(requests: list, handle: Callable, metrics: Recorder | None = None) -> list:
    """One response per request; an exception fails only its own request. With `metrics`, each
    request counts as in flight while handled, then by how it ended."""
    responses = []
    for request in requests:
        started = time.perf_counter()
        if metrics:
            metrics.started()
        try:
            outcome, answer = Outcome.OK, handle(request)
        except Exception as exc:  # keep serving: the request gets the error, its neighbours go on
            outcome, answer = failure(exc)
        if metrics:
            metrics.finished(outcome, time.perf_counter() - started)
        responses.append(answer)
    return responses


def from_entry(handle: Callable) -> Callable:
    """A stage's request handler that first refuses callers other than the entries (R27)."""

    def checked(request):
        check_caller(request)
        return handle(request)

    return checked


def _stage_inputs(tensors: dict[str, np.ndarray]) -> list:
    from wan_triton.serving.models import STAGE_KEY

    utils = pb()
    key = utils.Tensor(STAGE_KEY.name, bytes_tensor(stage_key()))
    return [key, *(utils.Tensor(name, array) for name, array in tensors.items())]


def call(model: str, tensors: dict[str, np.ndarray], outputs: list[str], timeout_us: int = 0) -> dict:
    """A synchronous BLS call; an error response becomes a StageError naming the model."""
    utils = pb()
    request = utils.InferenceRequest(
        model_name=model,
        requested_output_names=outputs,
        inputs=_stage_inputs(tensors),
        timeout=timeout_us,
    )
    result = request.exec()
    if result.has_error():
        raise bls_error(model, result.error())
    return {name: utils.get_output_tensor_by_name(result, name).as_numpy() for name in outputs}


def call_streaming(
    model: str,
    tensors: dict[str, np.ndarray],
    final: list[str],
    progress: list[str],
    on_progress: Callable[[dict[str, np.ndarray]], None],
) -> dict:
    """A BLS call to a decoupled model: `on_progress` sees each progress response, the final
    outputs are returned, an in-band error (models.STAGE_ERROR) raises StageError. The stream is
    always read to its end; callers stop a stage through serving/cancel.py, not by leaving."""
    from wan_triton.serving.models import STAGE_ERROR

    utils = pb()
    request = utils.InferenceRequest(
        model_name=model,
        requested_output_names=[*final, *progress, STAGE_ERROR.name],
        inputs=_stage_inputs(tensors),
    )
    outputs: dict = {}
    failed: Exception | None = None  # from on_progress: raised once the stream has ended
    for result in request.exec(decoupled=True):
        if result.has_error():
            raise bls_error(model, result.error())
        present = {t.name(): t.as_numpy() for t in result.output_tensors()}
        if STAGE_ERROR.name in present:  # a failed callback stopped the stage: that is the cause
            raise failed if failed is not None else StageError(f"{model}: {text(present[STAGE_ERROR.name])}")
        if final[0] in present:
            outputs = {name: present[name] for name in final}
        elif present and failed is None:
            try:
                on_progress(present)
            except Exception as exc:
                failed = exc
    if failed is not None:
        raise failed
    if not outputs:
        raise StageError(f"{model}: ended without its final outputs")
    return outputs


def send_final(sender, result) -> None:
    """The last response of a decoupled request: always sent, also on error and cancel (R11).
    When the response itself cannot be sent (shared memory full, a tensor the client cannot take),
    an empty final still is: a request left without its final keeps its model from unloading."""
    utils = pb()
    try:
        sender.send(result, flags=utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    except Exception as exc:
        utils.Logger.log_error(f"sending a final response failed ({type(exc).__name__}: {exc}); sending an empty one")
        try:
            sender.send(flags=utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as again:  # the sender took the flag with the failed send: nothing more to do
            utils.Logger.log_error(f"the empty final failed too: {type(again).__name__}: {again}")


def text(array: np.ndarray) -> str:
    value = array.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def bytes_tensor(*values: str | bytes) -> np.ndarray:
    return np.array([[v.encode("utf-8") if isinstance(v, str) else v] for v in values], dtype=np.object_)
