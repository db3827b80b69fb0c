"""Video jobs: their records in SQLite, their files beside it, and the workers that run them on Triton.

Layout of `--data-dir`: `jobs.sqlite` (WAL mode: readers never wait for the writer), `videos/ID.mp4`
and `videos/ID.png` (the first frame), `inputs/ID` (an image-to-video job's image until it has run).
A job queued when the API stopped is queued again when it starts (nothing of it ran); one that was
running is marked failed, since its Triton stream ended with the process that held it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from wan_triton.client import Client, ClientError, Progress
from wan_triton.serving.server import BACKEND_CACHE

DEFAULT_DATA_DIR = BACKEND_CACHE / "api"
QUEUED, IN_PROGRESS, COMPLETED, FAILED = "queued", "in_progress", "completed", "failed"
INTERRUPTED = "the API process stopped while this job was running; submit it again"
# A job refused with UNAVAILABLE before any step ran (Triton's queue is full, the server restarts) is
# tried again this many times, 2, 4, 8 ... s apart.
UNAVAILABLE_RETRIES = 4

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- the order of creation (created_at is in whole seconds)
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    completed_at INTEGER,
    status TEXT NOT NULL,
    progress INTEGER NOT NULL DEFAULT 0,
    model TEXT NOT NULL,
    entry TEXT NOT NULL,
    prompt TEXT NOT NULL,
    size TEXT NOT NULL,
    seconds TEXT NOT NULL,
    inputs TEXT NOT NULL,
    seed INTEGER,
    error_code TEXT,
    error_message TEXT,
    inference_time_s REAL,
    idempotency_key TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, seq);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_key ON jobs (owner, idempotency_key);
"""


@dataclasses.dataclass
class Job:
    id: str
    owner: str  # a hash of the API key that created it ("" without auth): keys see only their own jobs
    created_at: int
    status: str
    model: str  # the entry's name, as GET /v1/models lists it
    entry: str  # the streaming entry that runs it
    prompt: str
    size: str
    seconds: str
    inputs: dict  # the contract's inputs, the image aside (in inputs/ID)
    progress: int = 0
    completed_at: int | None = None
    seed: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    inference_time_s: float | None = None
    idempotency_key: str | None = None

    def to_json(self) -> dict:
        """The OpenAI `Video` object, plus our `seed` and `inference_time_s`."""
        error = None if self.error_code is None else {"code": self.error_code, "message": self.error_message}
        return {
            "id": self.id,
            "object": "video",
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            "expires_at": None,
            "model": self.model,
            "status": self.status,
            "progress": self.progress,
            "prompt": self.prompt,
            "seconds": self.seconds,
            "size": self.size,
            "error": error,
            "remixed_from_video_id": None,
            "seed": self.seed,
            "inference_time_s": self.inference_time_s,
        }


_COLUMNS = [f.name for f in dataclasses.fields(Job)]


class Store:
    """The jobs' records and files. Thread-safe: one connection, one lock (each call is a few ms)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        for folder in ("videos", "inputs"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.root / "jobs.sqlite", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    @contextmanager
    def _sql(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    def close(self) -> None:
        with self._sql() as db:
            db.close()

    @staticmethod
    def _job(row: tuple) -> Job:
        values = dict(zip(_COLUMNS, row, strict=True))
        values["inputs"] = json.loads(values["inputs"])
        return Job(**values)

    def add(self, job: Job, image: bytes | None) -> Job:
        """Store a new job; with an idempotency key already used by its owner, that job instead."""
        if image is not None:
            self.input_path(job.id).write_bytes(image)
        values = {**dataclasses.asdict(job), "inputs": json.dumps(job.inputs)}
        with self._sql() as db:
            if job.idempotency_key is not None:
                found = db.execute(
                    f"SELECT {','.join(_COLUMNS)} FROM jobs WHERE owner = ? AND idempotency_key = ?",
                    (job.owner, job.idempotency_key),
                ).fetchone()
                if found is not None:
                    self.input_path(job.id).unlink(missing_ok=True)
                    return self._job(found)
            db.execute(
                f"INSERT INTO jobs ({','.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})",
                [values[c] for c in _COLUMNS],
            )
        return job

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        """The job, if it exists and (given an owner) is that owner's."""
        with self._sql() as db:
            row = db.execute(f"SELECT {','.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        job = None if row is None else self._job(row)
        return job if job is not None and (owner is None or job.owner == owner) else None

    def update(self, job_id: str, **values: object) -> None:
        sets = ", ".join(f"{name} = ?" for name in values)
        with self._sql() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", [*values.values(), job_id])

    def page(self, owner: str, after: str | None, limit: int, newest_first: bool = True) -> tuple[list[Job], bool]:
        """One page of the owner's jobs, by creation time, starting after the job `after`."""
        order, compare = ("DESC", "<") if newest_first else ("ASC", ">")
        where, args = "owner = ?", [owner]
        with self._sql() as db:
            if after is not None:
                anchor = db.execute("SELECT seq FROM jobs WHERE id = ? AND owner = ?", (after, owner)).fetchone()
                if anchor is None:
                    raise KeyError(after)
                where += f" AND seq {compare} ?"
                args.append(anchor[0])
            rows = db.execute(
                f"SELECT {','.join(_COLUMNS)} FROM jobs WHERE {where} ORDER BY seq {order} LIMIT ?", [*args, limit + 1]
            ).fetchall()
        return [self._job(row) for row in rows[:limit]], len(rows) > limit

    def delete(self, job_id: str) -> None:
        with self._sql() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        for path in (self.video_path(job_id), self.thumbnail_path(job_id), self.input_path(job_id)):
            path.unlink(missing_ok=True)

    def ids(self, status: str) -> list[str]:
        with self._sql() as db:
            rows = db.execute("SELECT id FROM jobs WHERE status = ? ORDER BY seq", (status,)).fetchall()
        return [row[0] for row in rows]

    def count(self, status: str) -> int:
        with self._sql() as db:
            return db.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (status,)).fetchone()[0]

    def expire(self, keep: int) -> list[str]:
        """Delete all but the `keep` newest finished jobs (records and videos); their ids."""
        with self._sql() as db:
            rows = db.execute(
                "SELECT id FROM jobs WHERE status IN (?, ?) ORDER BY completed_at DESC, seq DESC LIMIT -1 OFFSET ?",
                (COMPLETED, FAILED, keep),
            ).fetchall()
        for (job_id,) in rows:
            self.delete(job_id)
        return [row[0] for row in rows]

    def video_path(self, job_id: str) -> Path:
        return self.root / "videos" / f"{job_id}.mp4"

    def thumbnail_path(self, job_id: str) -> Path:
        return self.root / "videos" / f"{job_id}.png"

    def input_path(self, job_id: str) -> Path:
        return self.root / "inputs" / job_id


def new_id() -> str:
    return f"video_{secrets.token_hex(12)}"


def first_frame_png(video: bytes) -> bytes:
    """The MP4's first frame as PNG (the `thumbnail` variant)."""
    import av

    with av.open(io.BytesIO(video)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    return png(frame)


def png(frame: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="PNG")
    return out.getvalue()


class QueueFull(Exception):
    """More jobs are waiting than the API takes (HTTP 429)."""


class Runner:
    """Runs queued jobs on Triton, `workers` at a time, each through a streaming entry (progress every
    step, a preview frame when asked). At most `max_queued` jobs wait; `keep` finished jobs are kept."""

    def __init__(
        self,
        store: Store,
        url: str,
        workers: int = 2,
        max_queued: int = 32,
        keep: int = 200,
        on_finish: Callable[[Job], None] | None = None,
    ) -> None:
        self.store, self.url, self.max_queued, self.keep = store, url, max_queued, keep
        self.on_finish = on_finish or (lambda job: None)
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stops: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.previews: dict[str, bytes] = {}  # the latest preview frame of each running job (PNG)
        for job_id in store.ids(IN_PROGRESS):
            store.update(job_id, status=FAILED, error_code="interrupted", error_message=INTERRUPTED)
        for job_id in store.ids(QUEUED):  # nothing of them ran: safe to run now
            self._queue.put(job_id)
        self._threads = [
            threading.Thread(target=self._work, name=f"api-worker-{n}", daemon=True) for n in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Job, image: bytes | None) -> Job:
        with self._lock:
            if self.store.count(QUEUED) >= self.max_queued:
                raise QueueFull(f"{self.max_queued} jobs are already waiting")
            stored = self.store.add(job, image)
        if stored is job:  # not an idempotent repeat of an earlier one
            self._queue.put(job.id)
        return stored

    def cancel(self, job_id: str) -> None:
        """Stop a running job (its Triton request is cancelled: the denoiser stops within its step) and
        forget it; a queued one is never started."""
        with self._lock:
            stop = self._stops.get(job_id)
            self.store.delete(job_id)
        if stop is not None:
            stop.set()
        self.previews.pop(job_id, None)

    def close(self) -> None:
        for stop in list(self._stops.values()):
            stop.set()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(10)

    def _work(self) -> None:
        while (job_id := self._queue.get()) is not None:
            with self._lock:
                job = self.store.get(job_id)
                if job is None or job.status != QUEUED:  # deleted while it waited
                    continue
                stop = self._stops[job_id] = threading.Event()
                self.store.update(job_id, status=IN_PROGRESS)
            try:
                self._run(job, stop)
            finally:
                with self._lock:
                    self._stops.pop(job_id, None)
                self.previews.pop(job_id, None)
                self.store.input_path(job_id).unlink(missing_ok=True)

    def _run(self, job: Job, stop: threading.Event) -> None:
        inputs = dict(job.inputs)
        image = self.store.input_path(job.id)
        if image.is_file():
            inputs["image"] = image.read_bytes()
        seen = threading.Event()

        def on_progress(progress: Progress) -> None:
            seen.set()
            self.store.update(job.id, progress=min(99, 100 * progress.step // max(progress.total, 1)))
            if progress.preview is not None:
                self.previews[job.id] = png(progress.preview)

        started, client = time.perf_counter(), Client(self.url, model=job.entry)
        for attempt in range(UNAVAILABLE_RETRIES + 1):
            try:
                result = client.generate_stream(on_progress=on_progress, stop=stop, **inputs)
                break
            except ClientError as error:
                if stop.is_set():  # deleted: the record and files are gone already
                    return
                retry = error.status == "UNAVAILABLE" and not seen.is_set() and attempt < UNAVAILABLE_RETRIES
                if not retry:
                    self._finish(job, FAILED, error_code=error.status.lower(), error_message=str(error))
                    return
                stop.wait(2.0 ** (attempt + 1))
        self.store.video_path(job.id).write_bytes(result.video)
        self.store.thumbnail_path(job.id).write_bytes(first_frame_png(result.video))
        seconds = round(time.perf_counter() - started, 3)
        self._finish(job, COMPLETED, progress=100, seed=result.seed, inference_time_s=seconds)

    def _finish(self, job: Job, status: str, **values: object) -> None:
        with self._lock:
            if self.store.get(job.id) is None:  # deleted as it finished
                self.store.delete(job.id)
                return
            values |= {"status": status, "completed_at": int(time.time())}
            self.store.update(job.id, **values)
        self.store.expire(self.keep)
        self.on_finish(dataclasses.replace(job, **values))  # as recorded (the record may have expired already)
