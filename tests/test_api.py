"""The OpenAI Videos API (`wan-triton api`, a real process) in front of the real served tiny checkpoint,
driven by the official `openai` SDK: the same videos as gRPC, the job's life (list, delete, cancel),
refusals naming the field, auth, the bounded queue, and restarts of the API process."""

from __future__ import annotations

import http.client
import io
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openai
import pytest
from conftest import LONG, SMALL
from PIL import Image
from test_metrics import scrape

from wan_triton.client import Client
from wan_triton.serving.server import free_port
from wan_triton.video import decode_mp4

# The tiny checkpoint's small request in the API's terms: size is WIDTHxHEIGHT.
FIELDS = {
    "seed": 42,
    "num_frames": SMALL["num_frames"],
    "num_inference_steps": SMALL["num_inference_steps"],
    "negative_prompt": SMALL["negative_prompt"],
    "guidance_scale": 5.0,
}
SIZE = f"{SMALL['width']}x{SMALL['height']}"
# Steps of 256x256, 33 frames: seconds in all, so a job is still running when a test acts on it.
SLOW = {"num_frames": LONG["num_frames"], "num_inference_steps": 60}
SLOW_SIZE = f"{LONG['width']}x{LONG['height']}"


@dataclass
class Api:
    port: int
    process: subprocess.Popen
    data_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sdk(self, key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)
        self.process.wait(30)


def start_api(triton: str, root: Path, *extra: str, data_dir: Path | None = None) -> Api:
    """`wan-triton api` (the real command) on a free port, answering."""
    data_dir = data_dir or root / "data"
    port = free_port()
    command = [sys.executable, "-m", "wan_triton.cli", "api", "--triton", triton, "--port", str(port)]
    log = (root / f"api-{port}.log").open("wb")
    process = subprocess.Popen([*command, "--data-dir", str(data_dir), *extra], stdout=log, stderr=subprocess.STDOUT)
    api = Api(port, process, data_dir)
    for _ in range(200):
        if process.poll() is not None:
            raise RuntimeError(f"wan-triton api exited with {process.returncode}: {Path(log.name).read_text()}")
        try:
            urllib.request.urlopen(f"{api.url}/health/ready", timeout=2)
            return api
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("wan-triton api did not answer")


@pytest.fixture(scope="module")
def api(served, tmp_path_factory):
    api = start_api(served.url, tmp_path_factory.mktemp("api"))
    yield api
    api.stop()
    assert api.process.returncode == -signal.SIGTERM  # uvicorn shuts down, then exits by the signal it got


def finished(client: openai.OpenAI, video_id: str, timeout_s: float = 120) -> openai.types.Video:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        video = client.videos.retrieve(video_id)
        if video.status in ("completed", "failed"):
            return video
        time.sleep(0.1)
    raise AssertionError(f"{video_id} still {video.status} after {timeout_s} s")


def running(client: openai.OpenAI, video_id: str, progress: int = 1) -> openai.types.Video:
    """Wait until the job has done at least `progress` percent of its steps."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        video = client.videos.retrieve(video_id)
        assert video.status in ("queued", "in_progress"), video
        if video.progress >= progress:
            return video
        time.sleep(0.05)
    raise AssertionError(f"{video_id} made no progress")


def steps_run(metrics_port: int) -> float:
    samples = scrape(metrics_port)
    return sum(value for (name, _), value in samples.items() if name == "wan_denoising_steps_total")


def test_the_sdk_makes_the_same_video_as_grpc(api, served):
    client = api.sdk()
    created = client.videos.create(prompt="a red cat walking in the snow", size=SIZE, extra_body=FIELDS)
    assert created.status == "queued" and created.object == "video" and created.progress == 0
    assert created.model == "wan_t2v" and created.size == SIZE
    assert created.seconds == f"{SMALL['num_frames'] / 16:.4g}"  # no seconds asked: the video's duration
    video = client.videos.poll(created.id)  # the SDK's own loop, paced by openai-poll-after-ms
    assert video.status == "completed" and video.progress == 100 and video.completed_at >= video.created_at
    extra = video.model_extra or {}
    assert extra["seed"] == 42 and extra["inference_time_s"] > 0
    mp4 = client.videos.download_content(created.id).read()
    frames, fps = decode_mp4(mp4)
    grpc = Client(served.url).generate(
        "a red cat walking in the snow", height=SMALL["height"], width=SMALL["width"], **FIELDS
    )
    expected, _ = decode_mp4(grpc.video)
    assert frames.shape == (SMALL["num_frames"], SMALL["height"], SMALL["width"], 3) and fps == 16
    assert np.array_equal(frames, expected)  # the same request and seed: the same video
    png = client.videos.download_content(created.id, variant="thumbnail").read()
    thumbnail = np.asarray(Image.open(io.BytesIO(png)))
    assert np.array_equal(thumbnail, frames[0])


def test_serve_runs_the_api_beside_triton(served):
    """`serve --api-port` (the `served` fixture's): the API answers for that server's models, and its
    process ends with serve (the fixture's teardown: exit 0 after the drain)."""
    url = f"http://127.0.0.1:{served.api_port}"
    for _ in range(300):
        try:
            ready = json.load(urllib.request.urlopen(f"{url}/health/ready", timeout=2))
            break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    assert ready == {"ready": True, "models": ["wan_t2v"]}
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    job = client.videos.create(prompt="beside", size=SIZE, extra_body=FIELDS)
    assert finished(client, job.id).status == "completed"


def test_seconds_and_fps_make_the_frames(api):
    client = api.sdk()
    created = client.videos.create(
        prompt="one second", size=SIZE, seconds="1", extra_body={**FIELDS, "num_frames": None, "fps": 8}
    )
    assert created.seconds == "1"
    assert finished(client, created.id).status == "completed"
    frames, fps = decode_mp4(client.videos.download_content(created.id).read())
    assert fps == 8 and len(frames) == 9  # 8 frames cover 1 s at 8 fps; 4k+1 -> 9


def test_json_requests_and_image_to_video_refused_where_not_served(api):
    """JSON works as multipart does; an image asks for image-to-video, which this checkpoint does not serve."""
    body = {"prompt": "json", "size": SIZE, **FIELDS}
    request = urllib.request.Request(
        f"{api.url}/v1/videos", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    job = json.load(urllib.request.urlopen(request, timeout=30))
    assert job["status"] == "queued" and job["size"] == SIZE
    png = io.BytesIO()
    Image.new("RGB", (48, 32), (200, 10, 10)).save(png, format="PNG")
    with pytest.raises(openai.BadRequestError) as refused:
        api.sdk().videos.create(prompt="i2v", size=SIZE, input_reference=("a.png", png.getvalue(), "image/png"))
    assert refused.value.body["param"] == "model" and "wan_t2v" in refused.value.body["message"]


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"size": "big"}, "size", "WIDTHxHEIGHT"),
        ({"size": "50x32"}, "size", "multiple of 16"),
        ({"seconds": "-2"}, "seconds", "positive"),
        ({"seconds": "1000"}, "seconds", "at most"),
        ({"extra_body": {"num_inference_steps": 1000}}, "num_inference_steps", "[1, 100]"),
        ({"extra_body": {"guidance_scale": "lots"}}, "guidance_scale", "must be a number"),
        ({"extra_body": {"colour": "red"}}, "colour", "not a field"),
        ({"extra_body": {"return_frames": True}}, "return_frames", "not a field"),
        ({"model": "sora-2"}, "model", "wan_t2v"),
        ({"prompt": "  "}, "prompt", "empty"),
        ({"extra_body": {"seed": -1}}, "seed", "allowed range"),
    ],
)
def test_bad_requests_are_400_naming_the_field(api, fields, param, words):
    values = {"prompt": "bad", "size": SIZE, **fields}
    before = len(api.sdk().videos.list(limit=100).data)
    with pytest.raises(openai.BadRequestError) as refused:
        api.sdk().videos.create(**values)
    error = refused.value.body
    assert error["param"] == param and words in error["message"] and error["type"] == "invalid_request_error"
    assert len(api.sdk().videos.list(limit=100).data) == before  # no job was made


def test_a_bad_image_is_refused_before_any_job(api):
    with pytest.raises(openai.BadRequestError) as refused:
        api.sdk().videos.create(prompt="bad image", input_reference=("a.png", b"\x89PNG\r\n\x1a\n trunc", "image/png"))
    assert refused.value.body["param"] in ("input_reference", "model")


def test_list_pages_newest_first_and_delete(api):
    client = api.sdk()
    ids = [client.videos.create(prompt=f"list {n}", size=SIZE, extra_body=FIELDS).id for n in range(3)]
    for video_id in ids:
        finished(client, video_id)
    first = client.videos.list(limit=2)
    assert [v.id for v in first.data] == ids[::-1][:2] and first.has_more
    second = client.videos.list(limit=2, after=first.data[-1].id)
    assert second.data[0].id == ids[0]
    assert [v.id for v in client.videos.list(limit=3, order="asc", after=ids[0]).data][:2] == ids[1:]
    deleted = client.videos.delete(ids[1])
    assert deleted.deleted and deleted.id == ids[1]
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(ids[1])
    with pytest.raises(openai.NotFoundError):
        client.videos.download_content(ids[1])
    assert not (api.data_dir / "videos" / f"{ids[1]}.mp4").exists()
    assert (api.data_dir / "videos" / f"{ids[0]}.mp4").exists()


def test_delete_cancels_a_running_job_within_a_step(api, served):
    client = api.sdk()
    job = client.videos.create(prompt="long", size=SLOW_SIZE, extra_body={**FIELDS, **SLOW})
    running(client, job.id, progress=5)
    client.videos.delete(job.id)
    at_delete = steps_run(served.metrics)
    # The cancel reaches the denoiser in at most ~0.2 s (the client looks every 50 ms, the entry's watcher
    # every 100 ms); the denoiser stops after the step it is in. Steps here take ~0.1 s.
    time.sleep(0.7)
    stopped = steps_run(served.metrics)
    time.sleep(2.0)  # tens of steps, had it gone on
    assert steps_run(served.metrics) == stopped and stopped - at_delete <= 3, (at_delete, stopped)
    samples = scrape(served.metrics)
    assert sum(v for (name, _), v in samples.items() if name == "wan_requests_cancelled_total") >= 1
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(job.id)
    after = client.videos.create(prompt="after", size=SIZE, extra_body=FIELDS)
    assert finished(client, after.id).status == "completed"  # the server is free again


def test_models_and_metrics(api):
    assert [m.id for m in api.sdk().models.list().data] == ["wan_t2v"]  # V2V needs a video: gRPC only
    page = urllib.request.urlopen(f"{api.url}/metrics", timeout=10).read().decode()
    assert 'wan_api_requests_total{code="200",method="POST",route="/v1/videos"}' in page
    assert 'wan_api_jobs_total{status="completed"}' in page and "wan_api_jobs_queued" in page


def test_auth_keys_and_owners(served, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# two callers\nkey-a\n\nkey-b\n")
    api = start_api(served.url, tmp_path, "--api-keys", str(keys), "--host", "127.0.0.1")
    try:
        with pytest.raises(openai.AuthenticationError):
            api.sdk("wrong").videos.list()
        request = urllib.request.Request(f"{api.url}/v1/videos")
        with pytest.raises(urllib.error.HTTPError) as none:
            urllib.request.urlopen(request, timeout=10)
        assert none.value.code == 401
        assert urllib.request.urlopen(f"{api.url}/health", timeout=10).status == 200  # probes need no key
        assert urllib.request.urlopen(f"{api.url}/", timeout=10).status == 200  # the page asks with the key
        job = api.sdk("key-a").videos.create(prompt="mine", size=SIZE, extra_body=FIELDS)
        assert [v.id for v in api.sdk("key-a").videos.list().data] == [job.id]
        assert api.sdk("key-b").videos.list().data == []  # another key sees none of it
        with pytest.raises(openai.NotFoundError):
            api.sdk("key-b").videos.delete(job.id)
        assert finished(api.sdk("key-a"), job.id).status == "completed"
    finally:
        api.stop()


def test_a_restart_keeps_jobs_and_marks_the_interrupted_one(served, tmp_path):
    api = start_api(served.url, tmp_path, "--workers", "1", "--max-queued", "1")
    client = api.sdk()
    done = client.videos.create(prompt="kept", size=SIZE, extra_body=FIELDS)
    assert finished(client, done.id).status == "completed"
    cut = client.videos.create(prompt="cut short", size=SLOW_SIZE, extra_body={**FIELDS, **SLOW})
    waiting = client.videos.create(prompt="waits", size=SIZE, extra_body=FIELDS)
    with pytest.raises(openai.RateLimitError) as full:  # one waits already
        client.videos.create(prompt="one too many", size=SIZE, extra_body=FIELDS)
    assert int(full.value.response.headers["Retry-After"]) >= 1
    running(client, cut.id)
    api.stop(signal.SIGKILL)  # no chance to tidy up

    api = start_api(served.url, tmp_path, "--workers", "1", data_dir=api.data_dir)
    try:
        client = api.sdk()
        kept = client.videos.retrieve(done.id)
        assert kept.status == "completed" and client.videos.download_content(done.id).read()[4:8] == b"ftyp"
        interrupted = client.videos.retrieve(cut.id)
        assert interrupted.status == "failed" and interrupted.error.code == "interrupted"
        assert "stopped while this job was running" in interrupted.error.message
        assert finished(client, waiting.id).status == "completed"  # queued, never started: run now
    finally:
        api.stop()


def test_idempotency_key_returns_the_same_job(api):
    client = api.sdk()
    headers = {"Idempotency-Key": "once-only"}
    first = client.videos.create(prompt="once", size=SIZE, extra_body=FIELDS, extra_headers=headers)
    again = client.videos.create(prompt="once", size=SIZE, extra_body=FIELDS, extra_headers=headers)
    assert again.id == first.id
    finished(client, first.id)


def test_an_oversized_body_is_413_before_it_is_read(api):
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    connection.putrequest("POST", "/v1/videos")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(40 << 20))
    connection.endheaders()  # and not one byte of the 40 MB it announced
    response = connection.getresponse()
    assert response.status == 413 and "at most" in json.loads(response.read())["error"]["message"]
    connection.close()


# --- Without a server: the field mapping and the store ------------------------------------------


def test_size_and_seconds_map_onto_the_contract():
    from wan_triton.api.videos import frames_of, submission
    from wan_triton.contract import WAN21, Limits, RequestError, validate

    sub = submission({"prompt": "a cat", "size": "832x480", "seconds": "5", "seed": "7"}, None)
    request = validate(frames_of(sub, WAN21, Limits()), WAN21)
    assert (request.width, request.height, request.num_frames, request.seed) == (832, 480, 81, 7)  # Wan's 5 s
    sub = submission({"prompt": "a cat", "seconds": "4", "fps": "24", "lora_names": ["a", "b"]}, None)
    assert frames_of(sub, WAN21, Limits())["num_frames"] == 97 and sub.raw["lora_names"] == ["a", "b"]
    for fields, name in (
        ({"size": "832x480", "height": 480}, "height"),
        ({"seconds": "2", "num_frames": 33}, "seconds"),
        ({"seed": ["1", "2"]}, "seed"),
        ({"preview": "maybe"}, "preview"),
        ({"image": "x"}, "image"),  # media only as input_reference
    ):
        with pytest.raises(RequestError) as refused:
            submission({"prompt": "a cat", **fields}, None)
        assert refused.value.field == name


def test_the_store_pages_by_creation_and_keeps_the_newest_finished(tmp_path):
    from wan_triton.api import jobs

    store = jobs.Store(tmp_path)
    made = []
    for n in range(5):
        job = jobs.Job(jobs.new_id(), "", 100, jobs.QUEUED, "wan_t2v", "wan_t2v", f"p{n}", "48x32", "1", {})
        made.append(store.add(job, b"image" if n == 0 else None).id)
    assert [j.id for j in store.page("", None, 10)[0]] == made[::-1]  # one second apart or not: by creation
    assert [j.id for j in store.page("", made[1], 10, newest_first=False)[0]] == made[2:]
    assert store.page("someone else", None, 10)[0] == []
    for n, job_id in enumerate(made[:4]):
        store.video_path(job_id).write_bytes(b"mp4")
        store.update(job_id, status=jobs.COMPLETED, completed_at=200 + n)
    assert sorted(store.expire(keep=2)) == sorted(made[:2])  # the oldest finished go, files and all
    assert store.get(made[0]) is None and not store.video_path(made[0]).exists()
    assert not store.input_path(made[0]).exists()
    assert store.get(made[4]).status == jobs.QUEUED  # waiting jobs are never expired
