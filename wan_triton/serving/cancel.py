"""Cancellation across models: one flag per job, visible to every model process of the server.

Triton marks a request cancelled when its client goes away (stream cancel, deadline), but the
Python backend of tritonserver 2.51 gives a BLS caller no way to cancel the sub-request it is
waiting on. The entry therefore raises a flag for its job id, and the denoiser checks it, with its
own request's `is_cancelled()`, before its first step and after every step. While the entry waits
on a stage, a watcher thread polls its request, so a job cancelled while queued at the denoiser
never runs (R10). The flags live in memory-backed /dev/shm, which all models of one server (one
pod) share.
"""

from __future__ import annotations

import os
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(os.environ.get("WAN_TRITON_CANCEL_DIR", "/dev/shm" if Path("/dev/shm").is_dir() else tempfile.gettempdir()))


def new_job_id() -> str:
    return uuid.uuid4().hex


def _flag(job_id: str) -> Path:
    if not job_id.isalnum():  # ids are our own uuid hex; refuse anything path-like
        raise ValueError(f"bad job id {job_id!r}")
    return ROOT / f"wan-triton-cancel-{job_id}"


def cancel(job_id: str) -> None:
    _flag(job_id).touch()


def is_cancelled(job_id: str) -> bool:
    return bool(job_id) and _flag(job_id).exists()


def clear(job_id: str) -> None:
    _flag(job_id).unlink(missing_ok=True)


@contextmanager
def watch(request, interval_s: float = 0.1) -> Iterator[str]:
    """A job id whose flag goes up as soon as Triton marks `request` cancelled; cleared on exit."""
    job_id, done = new_job_id(), threading.Event()

    def poll() -> None:
        while not done.wait(interval_s):
            if request.is_cancelled():
                cancel(job_id)
                return

    watcher = threading.Thread(target=poll, name=f"cancel-watch-{job_id[:8]}", daemon=True)
    watcher.start()
    try:
        yield job_id
    finally:
        done.set()
        watcher.join()
        clear(job_id)
