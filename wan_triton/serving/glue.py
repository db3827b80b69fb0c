"""The thin layer between Triton's Python backend and the core: tensors in, tensors or errors out.

`triton_python_backend_utils` exists only inside a backend stub, so it is imported lazily.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wan_triton.contract import RequestError
from wan_triton.serving.metrics import Outcome

if TYPE_CHECKING:
    from wan_triton.serving.metrics import Recorder

CHECKPOINT_ENV = "WAN_TRITON_CHECKPOINT"


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


class ModelContext:
    """What `initialize(args)` tells a model: its config, folder, device and checkpoint."""

    def __init__(self, args: dict) -> None:
        self.config = json.loads(args["model_config"])
        self.name = args["model_name"]
        self.folder = Path(args["model_repository"]) / args["model_version"]
        # The instance group decides: `serve` writes KIND_GPU for heavy models when it sees a GPU.
        gpu = args.get("model_instance_kind") == "GPU"
        self.device = f"cuda:{args.get('model_instance_device_id', '0')}" if gpu else "cpu"

    def parameter(self, key: str, default: str = "") -> str:
        return self.config.get("parameters", {}).get(key, {}).get("string_value", default)

    def checkpoint(self) -> Path:
        path = self.parameter("checkpoint") or os.environ.get(CHECKPOINT_ENV, "")
        if not path:
            raise RuntimeError(f"no checkpoint: set {CHECKPOINT_ENV} or the model parameter `checkpoint`")
        return Path(path)


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


def per_request(requests: list, handle: Callable, metrics: Recorder | None = None) -> list:
    """One response per request; an exception fails only its own request. With `metrics`, each
    request counts as in flight while handled, then by how it ended. (A RequestError is the
    entries' refusal: INVALID_ARGUMENT before any stage ran.)"""
    responses = []
    for request in requests:
        started = time.perf_counter()
        if metrics:
            metrics.started()
        try:
            outcome, answer = Outcome.OK, handle(request)
        except RequestError as exc:
            outcome, answer = Outcome.INVALID_ARGUMENT, error(str(exc), "INVALID_ARG")
        except ShuttingDown as exc:
            outcome, answer = Outcome.SHUTTING_DOWN, error(str(exc), "UNAVAILABLE")
        except DeadlineExceeded as exc:
            outcome, answer = Outcome.DEADLINE, error(f"deadline exceeded: {exc}", "CANCELLED")
        except Cancelled as exc:
            outcome, answer = Outcome.CANCELLED, error(f"cancelled: {exc}", "CANCELLED")
        except StageError as exc:
            outcome, answer = Outcome.FAILED, error(str(exc), exc.code)
        except Exception as exc:  # a bug or a runtime failure: report it, keep serving
            outcome, answer = Outcome.FAILED, error(f"{type(exc).__name__}: {exc}")
        if metrics:
            metrics.finished(outcome, time.perf_counter() - started)
        responses.append(answer)
    return responses


def call(model: str, tensors: dict[str, np.ndarray], outputs: list[str], timeout_us: int = 0) -> dict:
    """A synchronous BLS call; an error response becomes a StageError naming the model."""
    utils = pb()
    request = utils.InferenceRequest(
        model_name=model,
        requested_output_names=outputs,
        inputs=[utils.Tensor(name, array) for name, array in tensors.items()],
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
    outputs are returned, an in-band error (configs.STAGE_ERROR) raises StageError. The stream is
    always read to its end; callers stop a stage through serving/cancel.py, not by leaving."""
    from wan_triton.serving.configs import STAGE_ERROR

    utils = pb()
    request = utils.InferenceRequest(
        model_name=model,
        requested_output_names=[*final, *progress, STAGE_ERROR.name],
        inputs=[utils.Tensor(name, array) for name, array in tensors.items()],
    )
    outputs: dict = {}
    failed: Exception | None = None  # from on_progress: raised once the stream has ended
    for result in request.exec(decoupled=True):
        if result.has_error():
            raise bls_error(model, result.error())
        present = {t.name(): t.as_numpy() for t in result.output_tensors()}
        if STAGE_ERROR.name in present:
            raise StageError(f"{model}: {text(present[STAGE_ERROR.name])}")
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
    """The last response of a decoupled request: always sent, also on error and cancel (R11)."""
    sender.send(result, flags=pb().TRITONSERVER_RESPONSE_COMPLETE_FINAL)


def text(array: np.ndarray) -> str:
    value = array.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def bytes_tensor(*values: str | bytes) -> np.ndarray:
    return np.array([[v.encode("utf-8") if isinstance(v, str) else v] for v in values], dtype=np.object_)
