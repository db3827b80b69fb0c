"""Cancellation across models: one flag per job, visible to every model process of the server.

Triton marks a request cancelled when its client goes away (stream cancel, deadline), but the
Python backend of tritonserver 2.51 gives a BLS caller no way to cancel the sub-request it is
waiting on. The entry therefore raises a flag for its job id, and the denoiser checks it, with its
own request's `is_cancelled()`, before its first step and after every step. While the entry waits
on a stage, a watcher thread polls its request and the job's deadline, so a job cancelled while
queued at the denoiser never runs (R10) and none runs past `limit_deadline_s` (R12). The flags live
in memory-backed /dev/shm, which all models of one server (one pod) share.
"""

from __future__ import annotations

import contextvars
import json
import math
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from wan_triton.serving.glue import Cancelled, DeadlineExceeded, ShuttingDown
from wan_triton.serving.settings import RUN_DIR as ROOT

DRAINING = "wan-triton-draining"  # present while the server finishes its jobs before it stops
STOPPING = "wan-triton-stopping"  # the drain is over: running jobs end within a step (UNAVAILABLE)


def new_job_id() -> str:
    return uuid.uuid4().hex


def _flag(job_id: str, kind: str = "cancel") -> Path:
    if not job_id.isalnum():  # ids are our own uuid hex; refuse anything path-like
        raise ValueError(f"bad job id {job_id!r}")
    return ROOT / f"wan-triton-{kind}-{job_id}"


def draining() -> bool:
    return (ROOT / DRAINING).exists()


def stopping() -> bool:
    return (ROOT / STOPPING).exists()


def running_jobs(root: Path) -> list[Path]:
    """The jobs an entry is running under `root` (a server's run folder)."""
    return sorted(root.glob("wan-triton-running-*"))


def cancel(job_id: str) -> None:
    _flag(job_id).touch()


def is_cancelled(job_id: str) -> bool:
    return bool(job_id) and _flag(job_id).exists()


def clear(job_id: str) -> None:
    _flag(job_id).unlink(missing_ok=True)


class Watcher:
    """One job: its id, and why it must stop (the client left, or the deadline passed)."""

    def __init__(self, request, deadline_s: float) -> None:
        self.job_id, self.request = new_job_id(), request
        self.deadline = time.monotonic() + deadline_s
        self.deadline_s = deadline_s
        self.reason: str | None = None
        self.flagged = False

    def poll(self) -> bool:
        """Raise the job's flag when it must stop; True once it is up. A flag that cannot be
        written (/dev/shm full) is tried again at the next poll, never given up."""
        if self.reason is None:
            if self.request.is_cancelled():
                self.reason = "cancelled"
            elif time.monotonic() > self.deadline:
                self.reason = "deadline"
            elif stopping():
                self.reason = "shutdown"
        if self.reason and not self.flagged:
            try:
                cancel(self.job_id)
                self.flagged = True
            except OSError as exc:
                _log(f"cannot raise the cancel flag of job {self.job_id} ({exc}); trying again")
        return self.flagged

    def check(self) -> None:
        """Between stages: stop here if the job must stop."""
        if self.poll() or self.reason or is_cancelled(self.job_id):
            if self.reason == "deadline":
                raise DeadlineExceeded(f"the job ran past the server's {self.deadline_s:g} s limit (limit_deadline_s)")
            if self.reason == "shutdown":
                raise ShuttingDown(
                    "the server is shutting down: it stopped before the job finished (serve --drain-s); retry elsewhere"
                )
            raise Cancelled("by the client")


def _log(message: str) -> None:
    try:
        import triton_python_backend_utils as pb_utils
    except ImportError:  # in-process, outside a stub
        print(f"wan-triton: {message}", flush=True)
        return
    pb_utils.Logger.log_warn(message)


@contextmanager
def watch(request, deadline_s: float, interval_s: float = 0.1) -> Iterator[Watcher]:
    """A job whose flag goes up as soon as Triton marks `request` cancelled or `deadline_s`
    passes; polled by a thread while the entry waits on a stage; the flag is cleared on exit."""
    watcher, done = Watcher(request, deadline_s), threading.Event()

    def poll() -> None:
        while not done.wait(interval_s) and not watcher.poll():
            pass

    thread = threading.Thread(target=poll, name=f"cancel-watch-{watcher.job_id[:8]}", daemon=True)
    thread.start()
    try:
        yield watcher
    finally:
        done.set()
        thread.join()
        clear(watcher.job_id)


@dataclass
class Running:
    """An entry's running marker, and what it says to `serve`'s supervisor: which stub process
    runs the job, until when it may run (wall clock), and the stages it is waiting on now.

    Tritonserver 2.51 never returns a BLS call to a stage whose stub died, and nothing bounds a
    job stuck in a stage: the supervisor ends such an entry's stub by its pid (TritonServer.supervise).
    """

    path: Path
    pid: int
    until: float
    stages: list[str] = field(default_factory=list)

    def write(self) -> None:
        text = json.dumps({"pid": self.pid, "until": self.until, "stages": self.stages})
        partial = self.path.with_name(f".{self.path.name}")  # outside running_jobs' pattern
        partial.write_text(text)
        os.replace(partial, self.path)  # readers see the old content or the new, never half

    @classmethod
    def read(cls, path: Path) -> Running | None:
        """None when it is gone (the job ended) or not ours."""
        try:
            fields = json.loads(path.read_text())
            return cls(path, int(fields["pid"]), float(fields["until"]), [str(s) for s in fields["stages"]])
        except (OSError, ValueError, KeyError, TypeError):
            return None


_current: contextvars.ContextVar[Running | None] = contextvars.ContextVar("wan_triton_running", default=None)


@contextmanager
def running(deadline_s: float = math.inf) -> Iterator[Running]:
    """Marks an entry's execute() as running: a draining server waits until none is left. It
    covers sending the final response too: tritonserver counts a decoupled request as done once
    execute() has released it, and a final response sent after its SIGTERM fails, which leaves
    the model unable to unload (seen: shutdown stuck until Triton's exit timeout)."""
    marker = Running(_flag(new_job_id(), "running"), os.getpid(), time.time() + deadline_s)
    marker.write()
    token = _current.set(marker)
    try:
        yield marker
    finally:
        _current.reset(token)
        marker.path.unlink(missing_ok=True)


@contextmanager
def waiting_on(stage: str) -> Iterator[None]:
    """While the running job waits on `stage` (a BLS call), its marker says so."""
    marker = _current.get()
    if marker is None:  # in-process, or a thread of its own
        yield
        return
    marker.stages.append(stage)
    marker.write()
    try:
        yield
    finally:
        marker.stages.pop()
        marker.write()
