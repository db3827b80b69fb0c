"""End to end: a real tritonserver with the real model repository, over real gRPC."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import PROJECT, SMALL, ffprobe, small_request
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from wan_triton.client import CHANNEL_ARGS, Client, ClientError
from wan_triton.contract import REQUIRED_INPUTS, Family, inputs_of
from wan_triton.repository import DENOISER, T2V
from wan_triton.serving.configs import all_configs, render
from wan_triton.serving.models import ENTRIES, MODELS, served_models
from wan_triton.video import decode_mp4, to_uint8


def raw_infer(url: str, tensors: dict[str, tuple[np.ndarray, str]]):
    client = grpcclient.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
    inputs = []
    for name, (array, dtype) in tensors.items():
        tensor = grpcclient.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return client.infer(T2V, inputs)


def executions(url: str, model: str, settle_s: float = 0.3) -> int:
    """The model's execution count once it has stopped moving. tritonserver counts an execution
    when execute() returns, which for a decoupled model can come after its final response has
    reached the caller and the caller has moved on (seen in CI: a refused request "executed" after
    the next test had read its count)."""
    client = grpcclient.InferenceServerClient(url)

    def count() -> int:
        stats = client.get_inference_statistics(model, as_json=True)
        return int(stats["model_stats"][0].get("execution_count", 0))

    last, deadline = count(), time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(settle_s)
        now = count()
        if now == last:
            return now
        last = now
    return last


# --- configs and code agree -------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_checked_in_configs_are_the_generated_ones(name):
    path = PROJECT / "model_repository" / name / "config.pbtxt"
    assert path.read_text() == render(all_configs()[name]), "run: python -m wan_triton.serving.configs"
    parsed = text_format.Parse(path.read_text(), mc.ModelConfig())
    assert parsed.name == name and parsed.backend == "python"
    assert parsed.dynamic_batching.default_queue_policy.max_queue_size > 0


@pytest.mark.parametrize("name", list(MODELS))
def test_checked_in_model_files_are_the_generated_ones_and_name_real_classes(name):
    import importlib

    from wan_triton.serving.configs import IMPLEMENTATIONS, model_file

    path = PROJECT / "model_repository" / name / "1" / "model.py"
    assert path.read_text() == model_file(name), "run: python -m wan_triton.serving.configs"
    module, cls = IMPLEMENTATIONS[name].split(".")
    assert callable(getattr(importlib.import_module(f"wan_triton.serving.{module}"), cls))


def test_a_repository_is_generated_from_the_package_alone(tmp_path):
    """serve's default repository is written from nothing: every model's config and model.py."""
    from wan_triton.serving.configs import write

    write(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(MODELS)
    for name in MODELS:
        assert (tmp_path / name / "1" / "model.py").read_text() == (
            PROJECT / "model_repository" / name / "1" / "model.py"
        ).read_text()


@pytest.mark.parametrize("name", ["text_encoder_onnx"])
def test_native_backend_configs_are_generated_and_parse(name, exported_repository):
    from wan_triton.serving.configs import NATIVE_REPOSITORY, native_configs

    path = PROJECT / NATIVE_REPOSITORY / name / "config.pbtxt"
    assert path.read_text() == render(native_configs()[name])
    parsed = text_format.Parse(path.read_text(), mc.ModelConfig())
    assert parsed.platform == "onnxruntime_onnx"
    graph = json.loads((exported_repository / "text_encoder" / "1" / "manifest.json").read_text())["graphs"]["model"]
    assert [i.name for i in parsed.input] == [i["name"] for i in graph["inputs"]]
    assert [o.name for o in parsed.output] == [o["name"] for o in graph["outputs"]]


@pytest.mark.parametrize("name", list(ENTRIES))
def test_entry_inputs_are_the_contract(name):
    """Each task's entry takes the contract's inputs for that task; its own media input required."""
    task = ENTRIES[name]
    expected = [(s.name, s.optional and s.name not in REQUIRED_INPUTS.get(task, ())) for s in inputs_of(task)]
    assert [(i.name, i.optional) for i in all_configs()[name].input] == expected
    assert {o.name for o in all_configs()[name].output} >= {"video", "seed", "frames"}
    for name in MODELS:
        source = (PROJECT / "model_repository" / name / "1" / "model.py").read_text()
        assert "import" in source and "as TritonPythonModel" in source


def test_gpu_configs_put_heavy_models_on_the_gpu():
    gpu = all_configs(gpu=True)
    assert gpu[DENOISER].instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert gpu[T2V].instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


# --- the served video ---------------------------------------------------------------------------


def test_video_has_the_requested_frames_size_and_fps(served, tmp_path):
    result = Client(served.url).generate("a dog", seed=3, fps=12, **{**SMALL, "num_frames": 13})
    frames, fps = decode_mp4(result.video)
    assert frames.shape == (13, 32, 48, 3) and fps == 12 and result.seed == 3
    if shutil.which("ffprobe"):  # .ci/run installs it
        stream = ffprobe(result.video, tmp_path)
        assert (stream["width"], stream["height"], stream["nb_read_frames"]) == (48, 32, "13")
        assert (stream["codec_name"], stream["pix_fmt"], stream["r_frame_rate"]) == ("h264", "yuv420p", "12/1")


def test_cli_generates_over_grpc(served, tmp_path):
    import sys

    command = [
        sys.executable,
        "-m",
        "wan_triton.cli",
        "generate",
        "a red cat",
        "-o",
        str(tmp_path / "c.mp4"),
        "--url",
        served.url,
        "--contact-sheet",
        str(tmp_path / "c.png"),
        "--height",
        "32",
        "--width",
        "48",
        "--num-frames",
        "5",
        "--num-inference-steps",
        "2",
        "--seed",
        "9",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "seed 9" in done.stdout
    assert decode_mp4((tmp_path / "c.mp4").read_bytes())[0].shape == (5, 32, 48, 3)
    from PIL import Image

    assert Image.open(tmp_path / "c.png").size == (4 * 48, 2 * 32)  # 5 frames: a 4-wide grid of 2 rows
    refused = subprocess.run([*command[:-2], "--num-frames", "6"], capture_output=True, text=True)
    assert refused.returncode == 2 and "INVALID_ARGUMENT: num_frames" in refused.stderr


def test_served_frames_match_diffusers(served):
    """R25: the served pipeline (ONNX text encoder and VAE, torch denoiser) against WanPipeline."""
    from test_pipeline import reference

    request = small_request()
    result = Client(served.url).generate(request.prompt, frames=True, seed=request.seed, **SMALL)
    expected = to_uint8(reference(served.checkpoint, request))
    assert result.frames.shape == expected.shape
    difference = np.abs(result.frames.astype(int) - expected.astype(int))
    assert difference.max() <= 1, difference.max()  # float frames agree to 1e-4; rounding may flip a level
    decoded, _ = decode_mp4(result.video)
    assert np.abs(decoded.astype(int) - result.frames.astype(int)).mean() < 12  # what the lossy encode keeps


def test_same_seed_same_bytes_other_seed_other_video(served):
    """R23."""
    client = Client(served.url)
    first, again = (client.generate("a bird", seed=11, frames=True, **SMALL) for _ in range(2))
    assert first.video == again.video and np.array_equal(first.frames, again.frames)
    other = client.generate("a bird", seed=12, frames=True, **SMALL)
    assert np.abs(other.frames.astype(int) - first.frames.astype(int)).max() > 10


def test_a_step_cache_serves_one_request_and_comes_off_after_it(served):
    """Each method changes that request's frames (it skipped work); the exact request after it gives the
    bytes it gave before: nothing carries over to the next request on the instance."""
    client = Client(served.url)
    options = {**SMALL, "num_inference_steps": 8, "seed": 5}
    exact = client.generate("a boat", frames=True, **options)
    caches = ({"cache_method": "taylorseer", "cache_interval": 3}, {"cache_threshold": 1.0})
    for cache in (*caches, {"cache_method": "sea", "cache_threshold": 1.0}):
        cached = client.generate("a boat", frames=True, **options, **cache)
        assert not np.array_equal(cached.frames, exact.frames), cache
        assert client.generate("a boat", frames=True, **options).video == exact.video, cache


def test_missing_seed_is_random_and_returned(served):
    client = Client(served.url)
    a, b = client.generate("a fish", **SMALL), client.generate("a fish", **SMALL)
    assert a.seed != b.seed
    assert client.generate("a fish", seed=a.seed, **SMALL).video == a.video


def test_frames_never_cross_grpc_unless_asked(served):
    """A plain infer() names no outputs, and Triton then counts all as requested: frames are opt-in."""
    answer = raw_infer(
        served.url,
        {
            "prompt": (np.array([[b"a cat"]], dtype=np.object_), "BYTES"),
            "height": (np.array([[32]], np.int32), "INT32"),
            "width": (np.array([[48]], np.int32), "INT32"),
            "num_frames": (np.array([[5]], np.int32), "INT32"),
            "num_inference_steps": (np.array([[2]], np.int32), "INT32"),
        },
    )
    assert {o.name for o in answer.get_response().outputs} == {"video", "seed"}


# --- bad input: a clear error, no work, a healthy server (R1, part of R3) ------------------------


@pytest.mark.parametrize(
    ("tensors", "named"),
    [
        ({"height": (np.array([[32]], np.int32), "INT32")}, "prompt"),  # missing prompt
        (
            {"prompt": (np.array([[b"a"]], np.object_), "BYTES"), "height": (np.array([[32.0]], np.float32), "FP32")},
            "height",
        ),  # wrong dtype
        ({"prompt": (np.array([[b"a", b"b"]], np.object_), "BYTES")}, "prompt"),  # wrong rank / shape
        (
            {"prompt": (np.array([[b"a"]], np.object_), "BYTES"), "strength": (np.array([[1.0]], np.float32), "FP32")},
            "strength",
        ),  # unknown input
    ],
    ids=["missing", "dtype", "shape", "unknown"],
)
def test_malformed_requests_name_the_input_and_do_no_work(served, tensors, named):
    before = executions(served.url, DENOISER)
    with pytest.raises(InferenceServerException) as info:
        raw_infer(served.url, tensors)
    assert named in info.value.message()
    assert executions(served.url, DENOISER) == before
    assert Client(served.url).generate("a cat", **SMALL).video


@pytest.mark.parametrize(
    ("options", "field", "allowed"),
    [
        ({"height": 40}, "height", "multiple of 16"),
        ({"num_frames": 10}, "num_frames", "4k+1"),
        ({"num_inference_steps": 0}, "num_inference_steps", "[1, 100]"),
        ({"guidance_scale": float("nan")}, "guidance_scale", "allowed range"),
        ({"prompt": "   "}, "prompt", "empty"),
        ({"cache_method": "warp"}, "cache_method", "choose from none, first_block, mag, taylorseer"),
        ({"cache_method": "mag"}, "cache_method", "calibrated ratios"),  # the tiny checkpoint has none
        ({"cache_method": "taylorseer", "cache_interval": 9}, "cache_interval", "[2, 8]"),
        ({"cache_method": "taylorseer", "cache_threshold": 0.1}, "cache_threshold", "takes cache_interval"),
    ],
)
def test_invalid_values_are_invalid_argument(served, options, field, allowed):
    before = executions(served.url, DENOISER)
    options = {**SMALL, **options}
    with pytest.raises(ClientError) as info:
        Client(served.url).generate(options.pop("prompt", "a cat"), **options)
    assert info.value.status == "INVALID_ARGUMENT"
    assert str(info.value).startswith(field) and allowed in str(info.value)
    assert executions(served.url, DENOISER) == before


# --- load and lifecycle ---------------------------------------------------------------------------


def test_four_clients_five_requests_each(served):
    failures, videos = [], []

    def worker(index: int) -> None:
        client = Client(served.url)
        for j in range(5):
            try:
                videos.append(decode_mp4(client.generate(f"client {index} request {j}", **SMALL).video)[0].shape)
            except Exception as exc:  # collected, asserted below
                failures.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert not failures
    assert videos == [(9, 32, 48, 3)] * 20


def test_ready_only_after_every_model_loaded_and_warmed(served, tmp_path):
    """R16, on a second server over the same repository: the first time readiness answers yes,
    every model is ready (each warms up inside initialize). Triton 2.51 opens its endpoints only
    after the initial load, so liveness cannot answer earlier; Kubernetes covers the load with a
    startupProbe (docs in the deployment issue)."""
    from wan_triton.serving.server import TritonServer
    from wan_triton.serving.settings import ServeSettings

    server = TritonServer(served.repository, settings=ServeSettings(checkpoint=served.checkpoint), log=tmp_path / "log")
    base = f"http://127.0.0.1:{server.ports.http}/v2"

    def status(path: str) -> int:
        try:
            with urllib.request.urlopen(f"{base}/{path}", timeout=1) as response:
                return response.status
        except OSError:
            return 0

    server.launch()
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and status("health/ready") != 200:
            assert server.process.poll() is None, (tmp_path / "log").read_text()[-2000:]
            time.sleep(0.05)
        assert status("health/ready") == 200 and status("health/live") == 200
        loaded = served_models(Family.from_checkpoint(served.checkpoint))
        assert all(status(f"models/{name}/ready") == 200 for name in loaded)
        assert Client(server.grpc_url).generate("a cat", **SMALL).video
    finally:
        assert server.close() == 0
