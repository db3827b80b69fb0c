"""What anyone who reaches the serving ports can do (R26, R27, R29), against the live server:
every attempt is refused, nothing it sent runs, and the pipeline keeps serving."""

from __future__ import annotations

import base64
import json
import queue
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import LIMITS, SMALL
from test_media import flat_video
from test_serving import executions
from tritonclient.utils import InferenceServerException

from wan_triton.client import Client, ClientError
from wan_triton.repository import DENOISER, T2V, TEXT_ENCODER, V2V, VAE_DECODER
from wan_triton.serving.server import ADMIN_HEADER, stub_processes

# A model whose code, if it ever ran, leaves a file behind: the proof that a load ran code.
EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")


class TritonPythonModel:
    def execute(self, requests):
        return []
"""
EVIL_CONFIG = {"name": "evil", "backend": "python", "max_batch_size": 0, "input": [], "output": []}


def http(served, method: str, path: str, body: dict | None = None, headers: dict | None = None) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{served.http}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers=headers or {},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # loopback only
            return answer.status
    except urllib.error.HTTPError as refused:
        return refused.code


def serving(served) -> None:
    """The pipeline still answers with a video."""
    assert Client(served.url, retries=0).generate("still serving", **SMALL).video


def test_loading_code_over_http_is_refused_and_never_runs(served, tmp_path):
    """R26: the reproduction of the issue (a load with a `file:1/model.py` override ran its code)."""
    marker = tmp_path / "ran"
    body = {
        "parameters": {
            "config": json.dumps(EVIL_CONFIG),
            "file:1/model.py": base64.b64encode(EVIL.format(marker=str(marker)).encode()).decode(),
        }
    }
    assert http(served, "POST", "/v2/repository/models/evil/load", body) == 403
    # A guessed key is no key.
    assert http(served, "POST", "/v2/repository/models/evil/load", body, {ADMIN_HEADER: "guess"}) == 403
    assert http(served, "POST", f"/v2/repository/models/{DENOISER}/unload", {}) == 403
    assert http(served, "POST", "/v2/repository/index", {}) == 403
    time.sleep(1)  # a load that slipped through would have run its module by now
    assert not marker.exists()
    serving(served)


def test_admin_apis_over_grpc_are_refused(served, tmp_path):
    """R26 over gRPC: model repository, shared memory, logging and trace are all closed."""
    marker = tmp_path / "ran"
    client = grpcclient.InferenceServerClient(served.url)
    attempts = {
        "load": lambda: client.load_model(
            "evil",
            config=json.dumps(EVIL_CONFIG),
            files={"file:1/model.py": EVIL.format(marker=str(marker)).encode()},
        ),
        "unload": lambda: client.unload_model(DENOISER),
        "index": lambda: client.get_model_repository_index(),
        "shared memory": lambda: client.register_system_shared_memory("region", "/wan-triton-probe", 1024),
        "logging": lambda: client.update_log_settings({"log_verbose_level": 2}),
        "trace": lambda: client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]}),
    }
    for name, attempt in attempts.items():
        with pytest.raises(InferenceServerException) as refused:
            attempt()
        assert "restricted" in str(refused.value).lower() or "UNAVAILABLE" in str(refused.value), name
    time.sleep(1)
    assert not marker.exists()
    assert client.is_model_ready(DENOISER) and client.is_model_ready(T2V)
    serving(served)


def test_a_stage_called_directly_is_refused_before_any_work(served):
    """R27: the issue's reproduction (a direct streaming call of the denoiser with 2e9 steps held
    its only instance until the stub died) is refused at once; so is a wrong key anywhere."""
    client = grpcclient.InferenceServerClient(served.url)

    def tensor(name: str, array: np.ndarray, dtype: str) -> grpcclient.InferInput:
        item = grpcclient.InferInput(name, list(array.shape), dtype)
        item.set_data_from_numpy(array)
        return item

    controls = {
        "height": (32, np.int32, "INT32"),
        "width": (48, np.int32, "INT32"),
        "num_frames": (9, np.int32, "INT32"),
        "num_inference_steps": (2_000_000_000, np.int32, "INT32"),
        "guidance_scale": (5.0, np.float32, "FP32"),
        "guidance_scale_2": (np.nan, np.float32, "FP32"),
        "flow_shift": (np.nan, np.float32, "FP32"),
        "seed": (1, np.int64, "INT64"),
        "cache_method": (b"none", np.object_, "BYTES"),
        "cache_threshold": (0.0, np.float32, "FP32"),
        "cache_interval": (0, np.int32, "INT32"),
    }
    embeds = np.zeros((1, 8, 32), np.float32)
    base = [tensor("prompt_embeds", embeds, "FP32"), tensor("negative_prompt_embeds", embeds, "FP32")]
    base += [tensor(n, np.array([[v]], dtype), t) for n, (v, dtype, t) in controls.items()]
    wrong = tensor("stage_key", np.array([[b"guess"]], dtype=np.object_), "BYTES")
    before = executions(served.url, DENOISER)
    for inputs in (base, [*base, wrong]):
        answers: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error, answers=answers: answers.put((result, error)))
        started = time.monotonic()
        client.async_stream_infer(DENOISER, inputs, enable_empty_final_response=True)
        _, error = answers.get(timeout=30)
        client.stop_stream(cancel_requests=False)
        assert error is not None and "stage_key" in str(error), error
        assert time.monotonic() - started < 5
    # Triton refuses the keyless call itself; the wrong key reaches execute and goes no further.
    assert executions(served.url, DENOISER) - before == 1
    # Plain stages: refused with INVALID_ARGUMENT naming the key.
    latents = tensor("latents", np.zeros((1, 16, 1, 2, 2), np.float32), "FP32")
    prompts = [tensor(n, np.array([[b"a cat"]], dtype=np.object_), "BYTES") for n in ("prompt", "negative_prompt")]
    for model, inputs in ((VAE_DECODER, [latents, wrong]), (TEXT_ENCODER, [*prompts, wrong])):
        with pytest.raises(InferenceServerException) as refused:
            client.infer(model, inputs)
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT" and "stage_key" in str(refused.value), model
    serving(served)


def test_a_huge_adapter_list_is_refused_by_its_count(served):
    """R29: a list input is counted before any list is built; the request does no work."""
    before = executions(served.url, DENOISER)
    with pytest.raises(ClientError) as refused:
        Client(served.url, retries=0).generate("a cat", lora_names=["a"] * 10_000, **SMALL)
    assert refused.value.status == "INVALID_ARGUMENT" and "lora_names: has 10000 values" in str(refused.value)
    assert executions(served.url, DENOISER) == before
    with pytest.raises(ClientError) as refused:
        Client(served.url, retries=0).generate("a cat", lora_names=["a"], lora_scales=[1.0] * 5000, **SMALL)
    assert refused.value.status == "INVALID_ARGUMENT" and "lora_scales" in str(refused.value)
    serving(served)


def peak_rss(served, model: str) -> int:
    """The highest resident memory any instance of `model` has had (VmHWM), in bytes."""
    peaks = []
    for pid, line in stub_processes(served.repository).items():
        if f"/{model}/1/model.py" in line:
            status = Path(f"/proc/{pid}/status").read_text()
            peaks.append(int(next(row.split()[1] for row in status.splitlines() if row.startswith("VmHWM:"))) * 1024)
    assert peaks, f"no stub of {model}"
    return max(peaks)


def test_a_decode_bomb_is_refused_from_its_header_and_large_frames_shrink_as_they_decode(served):
    """R28, the issue's reproduction: a ~50 KB MP4 of 4096^2 frames sent to wan_v2v grew the entry
    by 3.9 GiB before any refusal. Now past max_media_decoded_bytes it is refused before a frame
    decodes; within it, each frame is fitted to the output as it decodes."""
    cap = LIMITS["max_media_decoded_bytes"]
    before = peak_rss(served, V2V), executions(served.url, DENOISER)
    with pytest.raises(ClientError) as refused:
        Client(served.url, retries=0).generate("a cat", video=flat_video(9, 4096), **SMALL)
    assert refused.value.status == "INVALID_ARGUMENT"
    assert f"video: would decode to {9 * 4096 * 4096 * 3} bytes" in str(refused.value) and str(cap) in str(
        refused.value
    )
    assert executions(served.url, DENOISER) == before[1]
    assert peak_rss(served, V2V) - before[0] < 100 << 20
    # 5 frames of 4096^2 (252 MB at their own size, under the cap) make a 32x48 video.
    result = Client(served.url, retries=0).generate(
        "a cat", video=flat_video(5, 4096), frames=True, **{**SMALL, "num_frames": 5}
    )
    assert result.frames.shape == (5, 32, 48, 3)
    # Measured: ~200 MB (FFmpeg's frame-threaded decoder and one RGB source frame with its PIL
    # copy, ~50 MB each, at 4096^2). Holding the clip at its own size (then stacking and fitting
    # it, as before) would be 2 x 252 MB at least.
    grown, clip = peak_rss(served, V2V) - before[0], 5 * 4096 * 4096 * 3
    assert grown < clip, f"the entry grew by {grown} bytes, more than the clip at its own size ({clip})"


def test_past_capacity_every_request_ends_with_a_video_or_unavailable(served):
    """R31 (the issue's item 8: 18 requests at once over four entries gave 5 INTERNAL "denoiser:
    Exceeds maximum queue size"). Capacity is decided at the entries: with every entry instance
    busy and every entry queue full, the rest are refused there with UNAVAILABLE; no stage refuses
    what an entry admitted, and nothing hangs."""
    from concurrent.futures import ThreadPoolExecutor

    from wan_triton.video import encode_mp4

    tiny = {**SMALL, "num_frames": 5, "num_inference_steps": 2}
    clip = encode_mp4(np.full((5, 32, 48, 3), 120, np.uint8), 8)
    jobs = [{}, {"stream": True}, {"video": clip}, {"video": clip, "stream": True}] * 7  # 28 > 12 + 4 x 2

    def one(job: dict) -> str:
        options = {**tiny, **{k: v for k, v in job.items() if k != "stream"}}
        client = Client(served.url, retries=0, timeout_s=120)
        try:
            (client.generate_stream if job.get("stream") else client.generate)("at capacity", **options)
            return "video"
        except ClientError as exc:
            return f"{exc.status}: {exc}"

    with ThreadPoolExecutor(len(jobs)) as pool:
        outcomes = list(pool.map(one, jobs))
    assert all(o == "video" or o.startswith("UNAVAILABLE") for o in outcomes), outcomes
    assert outcomes.count("video") >= 12, outcomes  # every entry instance ran one
    serving(served)
