"""The ASGI app: the OpenAI Videos API and the playground page, in front of Triton.

Starlette on uvicorn rather than FastAPI: the request contract (wan_triton/contract.py) already
defines and validates every field, so FastAPI's pydantic models would define them a second time; the
API needs routing, multipart, file responses and middleware, which Starlette is.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Match, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tritonclient.utils import InferenceServerException

from wan_triton.admission import Served, admit
from wan_triton.api import jobs
from wan_triton.api.videos import Submission, duration_of, frames_of, size_of, submission
from wan_triton.client import Client, ClientError
from wan_triton.contract import REQUIRED_INPUTS, WAN21, Limits, RequestError, tasks_of
from wan_triton.repository import ENTRY_MODELS
from wan_triton.serving.metrics import REQUEST_BUCKETS, Metric

# Everything but the image is a few KB of fields; the image is bounded by the served limits.
FIELDS_BYTES = 1 << 20
PUBLIC_PATHS = ("/", "/health", "/health/ready", "/metrics")  # and /static/: the page asks with the key itself
MAX_PAGE = 100
# The tasks whose required inputs the API takes: a prompt, and an image as `input_reference`. The others
# (V2V, Animate) need videos, which the OpenAI API has no field for: they are served over gRPC.
API_TASKS = tuple(task for task in ENTRY_MODELS if set(REQUIRED_INPUTS.get(task, ())) <= {"image"})


def error(status: int, message: str, param: str | None = None, code: str | None = None, **headers: str) -> Response:
    """An OpenAI-style error body."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status, headers=headers or None)


def refused(exc: RequestError, sub: Submission | None = None) -> Response:
    """HTTP 400 naming the API's field: the contract's `image` is `input_reference` here, and with
    `size`/`seconds` given, the sides and the frames they became are named by them."""
    name, message = exc.field, str(exc).removeprefix(f"{exc.field}: ")
    if name == "image":
        name = "input_reference"
    elif name in ("height", "width") and sub is not None and "size" in sub.given:
        name, message = "size", f"{exc.field} {message}"
    elif name == "num_frames" and sub is not None and sub.seconds is not None:
        name, message = "seconds", f"num_frames {message}"
    return error(400, f"{name}: {message}", param=name, code="invalid_value")


@dataclass
class Settings:
    triton: str  # Triton's gRPC address
    data_dir: Path
    api_keys: tuple[str, ...] = ()  # none: no auth (then the API binds to loopback unless told otherwise)
    workers: int = 2
    max_queued: int = 32
    keep: int = 200


# The API's own series (Triton's and the models' are on Triton's metrics port), defined once: the
# Grafana dashboard under deploy/ reads them.
API_REQUESTS = Metric("wan_api_requests_total", "COUNTER", "HTTP requests answered", ("method", "route", "code"))
API_REQUEST_SECONDS = Metric(
    "wan_api_request_duration_seconds",
    "HISTOGRAM",
    "Seconds to answer an HTTP request (not the job: creating one only queues it)",
    ("method", "route"),
    (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
API_JOBS = Metric("wan_api_jobs_total", "COUNTER", "Video jobs finished", ("status",))
API_JOB_SECONDS = Metric(
    "wan_api_job_duration_seconds", "HISTOGRAM", "Seconds a completed job ran on Triton", (), REQUEST_BUCKETS
)
API_QUEUED = Metric("wan_api_jobs_queued", "GAUGE", "Video jobs waiting for a worker", ())
API_RUNNING = Metric("wan_api_jobs_running", "GAUGE", "Video jobs running on Triton", ())
API_METRICS = (API_REQUESTS, API_REQUEST_SECONDS, API_JOBS, API_JOB_SECONDS, API_QUEUED, API_RUNNING)


class Metrics:
    """API_METRICS in a registry of their own (prometheus_client)."""

    def __init__(self, store: jobs.Store) -> None:
        disable_created_metrics()  # no `_created` twin of every series
        self.registry = CollectorRegistry()
        kinds = {"COUNTER": Counter, "GAUGE": Gauge, "HISTOGRAM": Histogram}
        made = {}
        for metric in API_METRICS:
            options = {"buckets": metric.buckets} if metric.buckets else {}
            made[metric] = kinds[metric.kind](metric.name, metric.doc, metric.labels, registry=self.registry, **options)
        self.requests, self.latency = made[API_REQUESTS], made[API_REQUEST_SECONDS]
        self.jobs, self.job_seconds = made[API_JOBS], made[API_JOB_SECONDS]
        made[API_QUEUED].set_function(lambda: store.count(jobs.QUEUED))
        made[API_RUNNING].set_function(lambda: store.count(jobs.IN_PROGRESS))
        for status in (jobs.COMPLETED, jobs.FAILED):
            self.jobs.labels(status)

    def finished(self, job: jobs.Job) -> None:
        self.jobs.labels(job.status).inc()
        if job.inference_time_s is not None:
            self.job_seconds.observe(job.inference_time_s)


class Front:
    """What the routes share: the store, the runner, Triton's client and what it serves."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = jobs.Store(settings.data_dir)
        self.metrics = Metrics(self.store)
        self.runner = jobs.Runner(
            self.store, settings.triton, settings.workers, settings.max_queued, settings.keep, self._finished
        )
        self.client = Client(settings.triton)
        self._keys = {hashlib.sha256(key.encode()).hexdigest()[:16]: key for key in settings.api_keys}
        self._recent: list[float] = []  # the last completed jobs' seconds on Triton
        self._served: dict[str, Served] = {}

    def _finished(self, job: jobs.Job) -> None:
        self.metrics.finished(job)
        if job.inference_time_s is not None:
            self._recent = [*self._recent[-19:], job.inference_time_s]

    def owner(self, request: Request) -> str | None:
        """The caller's owner id (a hash of its key; "" without auth), None if its key is wrong."""
        if not self._keys:
            return ""
        given = request.headers.get("authorization", "")
        token = given.removeprefix("Bearer ").strip() if given.startswith("Bearer ") else ""
        for owner, key in self._keys.items():
            if hmac.compare_digest(token.encode(), key.encode()):
                return owner
        return None

    def served_entries(self) -> list[str]:
        """The plain entries Triton has ready that this API can drive (its model ids)."""
        ready = []
        for plain, stream in (ENTRY_MODELS[task] for task in API_TASKS):
            try:
                if self.client.grpc.is_model_ready(stream):
                    ready.append(plain)
            except InferenceServerException:  # Triton unreachable: none ready
                return []
        return ready

    def served(self, entry: str) -> Served:
        """What the entry serves (admission.Served), asked once per entry. A repository `serve` did not
        write says only its limits: then the contract's own rules, at Wan2.1's geometry, are all that
        refuses here."""
        if entry not in self._served:
            served = self.client.served(entry)
            if served is None:
                geometry, limits = self.client.served_contract(entry)
                served = Served(geometry or WAN21, None, limits)
            self._served[entry] = served
        return self._served[entry]

    def retry_after(self) -> str:
        """Seconds until a waiting place is likely free: a typical job's time over the workers."""
        typical = sum(self._recent) / len(self._recent) if self._recent else 10.0
        return str(max(1, round(typical / max(self.settings.workers, 1))))


async def _fields(request: Request) -> tuple[dict[str, object], bytes | None]:
    """The create request's fields (JSON or multipart) and the `input_reference` image's bytes."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data") or kind.startswith("application/x-www-form-urlencoded"):
        form = await request.form(max_files=1, max_fields=100, max_part_size=FIELDS_BYTES)
        values: dict[str, object] = {}
        image = None
        for key, value in form.multi_items():
            name = key.removesuffix("[]")  # the SDK's list fields: lora_names[]=a&lora_names[]=b
            if isinstance(value, UploadFile):
                if name != "input_reference":
                    raise RequestError(name, "is not a file field; only input_reference is")
                image = await value.read()
                continue
            if name in values:
                previous = values[name]
                values[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
            else:
                values[name] = [value] if key.endswith("[]") else value
        await form.close()
        return values, image
    try:
        body = json.loads(await request.body() or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError("body", f"is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise RequestError("body", "must be a JSON object of fields")
    image = None
    reference = body.pop("input_reference", None)
    if reference is not None:
        image = _data_url(reference)
    return body, image


def _data_url(value: object) -> bytes:
    """JSON's `input_reference`: an image as a base64 `data:` URL. Nothing is ever fetched (R7)."""
    text = value.get("image_url") if isinstance(value, dict) else value
    if not isinstance(text, str) or not text.startswith("data:") or ";base64," not in text:
        raise RequestError(
            "input_reference", "must be an uploaded file (multipart) or a base64 data: URL; URLs are never fetched"
        )
    try:
        return base64.b64decode(text.partition(";base64,")[2], validate=True)
    except binascii.Error:
        raise RequestError("input_reference", "is not valid base64") from None


def _entry(front: Front, sub: Submission) -> tuple[str, str]:
    """(the plain entry that is the job's model, its task), as the API's `model` or the inputs ask."""
    served = front.served_entries()
    if not served:
        raise ClientError("Triton serves no video model right now", "UNAVAILABLE")
    tasks = {plain: task for task, (plain, _) in ENTRY_MODELS.items()}
    if sub.model is not None:
        if sub.model not in served:
            raise RequestError("model", f"is {sub.model!r}; this server serves {', '.join(served)}")
        return sub.model, tasks[sub.model]
    fitting = [ENTRY_MODELS[task][0] for task in tasks_of(sub.raw) if ENTRY_MODELS[task][0] in served]
    if not fitting:
        what = "an image (input_reference)" if "image" in sub.raw else "a prompt alone"
        raise RequestError("model", f"no model served here takes {what}; served: {', '.join(served)}")
    return fitting[0], tasks[fitting[0]]


async def create(request: Request) -> Response:
    front: Front = request.app.state.front
    sub = None
    try:
        values, image = await _fields(request)
        sub = submission(values, image)
        model, task = await run_in_threadpool(_entry, front, sub)
        served = await run_in_threadpool(front.served, model)
        raw = frames_of(sub, served.geometry, served.limits)
        # refused as the entry will refuse it (a bad image included), not as a failed job
        checked, _ = await run_in_threadpool(admit, raw, task, served)
    except RequestError as exc:
        return refused(exc, sub)
    except (ClientError, InferenceServerException) as exc:  # Triton down or restarting
        return error(503, f"Triton at {front.settings.triton}: {exc}", code="unavailable", **{"Retry-After": "5"})
    inputs = {name: value for name, value in raw.items() if name != "image"}
    job = jobs.Job(
        id=jobs.new_id(),
        owner=request.state.owner,
        created_at=int(time.time()),
        status=jobs.QUEUED,
        model=model,
        entry=model,
        prompt=checked.prompt,
        size=size_of(checked),
        seconds=sub.seconds or duration_of(checked),
        inputs=inputs,
        idempotency_key=request.headers.get("idempotency-key"),
    )
    try:
        job = front.runner.submit(job, raw.get("image"))  # type: ignore[arg-type]
    except jobs.QueueFull as exc:
        return error(
            429, f"too many jobs: {exc}; retry later", code="queue_full", **{"Retry-After": front.retry_after()}
        )
    return JSONResponse(job.to_json())


def _job(request: Request) -> jobs.Job | None:
    front: Front = request.app.state.front
    return front.store.get(request.path_params["video_id"], request.state.owner)


def _missing(request: Request) -> Response:
    video_id = request.path_params["video_id"]
    return error(404, f"no video {video_id!r}", param="video_id", code="not_found")


# How soon the SDK's `poll` asks again about a job still queued or running (its `openai-poll-after-ms`).
POLL_AFTER_MS = 500


def _video(job: jobs.Job) -> Response:
    waiting = job.status in (jobs.QUEUED, jobs.IN_PROGRESS)
    return JSONResponse(job.to_json(), headers={"openai-poll-after-ms": str(POLL_AFTER_MS)} if waiting else None)


async def retrieve(request: Request) -> Response:
    job = _job(request)
    return _video(job) if job is not None else _missing(request)


async def content(request: Request) -> Response:
    front: Front = request.app.state.front
    job = _job(request)
    if job is None:
        return _missing(request)
    variant = request.query_params.get("variant", "video")
    if variant not in ("video", "thumbnail"):
        return error(400, f"variant: is {variant!r}; video or thumbnail", param="variant", code="invalid_value")
    if job.status != jobs.COMPLETED:
        return error(409, f"video {job.id!r} is {job.status}, not completed", param="video_id", code="not_ready")
    if variant == "thumbnail":
        return FileResponse(front.store.thumbnail_path(job.id), media_type="image/png")
    return FileResponse(front.store.video_path(job.id), media_type="video/mp4", filename=f"{job.id}.mp4")


async def preview(request: Request) -> Response:
    """The running job's latest preview frame (PNG), when it was created with `preview=true`."""
    front: Front = request.app.state.front
    job = _job(request)
    if job is None:
        return _missing(request)
    frame = front.runner.previews.get(job.id)
    if frame is None:
        return Response(status_code=204)
    return Response(frame, media_type="image/png", headers={"Cache-Control": "no-store"})


async def listing(request: Request) -> Response:
    front: Front = request.app.state.front
    query = request.query_params
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE:
        return error(400, f"limit: is {query.get('limit')!r}; 1 to {MAX_PAGE}", param="limit", code="invalid_value")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        return error(400, f"order: is {order!r}; asc or desc", param="order", code="invalid_value")
    try:
        page, more = front.store.page(request.state.owner, query.get("after"), limit, order == "desc")
    except KeyError:
        return error(400, f"after: no video {query.get('after')!r}", param="after", code="invalid_value")
    data = [job.to_json() for job in page]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }
    )


async def delete(request: Request) -> Response:
    front: Front = request.app.state.front
    job = _job(request)
    if job is None:
        return _missing(request)
    front.runner.cancel(job.id)
    return JSONResponse({"id": job.id, "object": "video.deleted", "deleted": True})


async def models(request: Request) -> Response:
    front: Front = request.app.state.front
    served = await run_in_threadpool(front.served_entries)
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "wan-triton"} for name in served]
    return JSONResponse({"object": "list", "data": data})


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    front: Front = request.app.state.front
    served = await run_in_threadpool(front.served_entries)
    return JSONResponse({"ready": bool(served), "models": served}, 200 if served else 503)


async def metrics(request: Request) -> Response:
    front: Front = request.app.state.front
    return Response(generate_latest(front.metrics.registry), media_type=CONTENT_TYPE_LATEST)


STATIC = resources.files("wan_triton.api") / "static"


async def page(request: Request) -> Response:
    return Response((STATIC / "index.html").read_bytes(), media_type="text/html; charset=utf-8")


class Gate:
    """Pure ASGI middleware: the caller's key (401 without the right one), a cap on the request body
    (413 past it, before it is all read), and the request counts and latencies."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        front: Front = scope["app"].state.front
        route = next((r.path for r in scope["app"].routes if r.matches(scope)[0] == Match.FULL), "other")
        started, status = time.perf_counter(), {"code": 500}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            response = self._refusal(request, front)
            if response is not None:
                await response(scope, receive, sending)
                return
            await self.app(scope, self._capped(receive), sending)
        except BodyTooLarge:
            await error(413, f"the request body is over {self.max_body} bytes", code="too_large")(
                scope, receive, sending
            )
        finally:
            method = scope["method"]
            front.metrics.requests.labels(method, route, str(status["code"])).inc()
            front.metrics.latency.labels(method, route).observe(time.perf_counter() - started)

    def _refusal(self, request: Request, front: Front) -> Response | None:
        path = request.url.path
        owner = "" if path in PUBLIC_PATHS or path.startswith("/static/") else front.owner(request)
        if owner is None:
            return error(401, "a valid API key is required: Authorization: Bearer KEY", code="invalid_api_key")
        request.scope.setdefault("state", {})["owner"] = owner
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return error(413, f"the request body is {length} bytes; at most {self.max_body}", code="too_large")
        return None

    def _capped(self, receive: Receive) -> Receive:
        seen = 0

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge
            return message

        return capped


class BodyTooLarge(Exception):
    pass


ROUTES = [
    Route("/", page),
    Route("/health", health),
    Route("/health/ready", ready),
    Route("/metrics", metrics),
    Route("/v1/models", models),
    Route("/v1/videos", create, methods=["POST"]),
    Route("/v1/videos", listing, methods=["GET"]),
    Route("/v1/videos/{video_id}", retrieve, methods=["GET"]),
    Route("/v1/videos/{video_id}", delete, methods=["DELETE"]),
    Route("/v1/videos/{video_id}/content", content),
    Route("/v1/videos/{video_id}/preview", preview),
    Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
]


def read_keys(path: str | Path) -> tuple[str, ...]:
    """API keys, one per line; blank lines and # comments are skipped."""
    lines = (line.strip() for line in Path(path).read_text().splitlines())
    keys = tuple(line for line in lines if line and not line.startswith("#"))
    if not keys:
        raise ValueError(f"{path}: no API keys in it")
    return keys


def create_app(settings: Settings) -> Starlette:
    front = Front(settings)
    # The image is bounded by the served limits; the API's default is the contract's default cap.
    max_body = Limits().max_image_bytes * 4 // 3 + FIELDS_BYTES  # base64 in JSON takes a third more

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        front.runner.close()  # running jobs are cancelled on Triton and marked interrupted
        front.store.close()

    app = Starlette(routes=ROUTES, lifespan=lifespan)
    app.state.front = front
    app.add_middleware(Gate, max_body=max_body)
    return app
