"""Limits and hostile input against the live server (R2, R4-R7, R12): a clean answer, no work
done for what is refused, and a healthy server afterwards. The served fixture's limits are
conftest.LIMITS."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import LIMITS, LONG, SMALL
from test_serving import executions

from wan_triton.client import Client, ClientError
from wan_triton.repository import DENOISER


def rejected(url: str, prompt: object, **options) -> tuple[ClientError, float]:
    """The error a request gets and the seconds it took (best of three: these machines are noisy)."""
    times, error = [], None
    for _ in range(3):
        started = time.perf_counter()
        with pytest.raises(ClientError) as info:
            Client(url, retries=0).generate(prompt, **{**SMALL, **options})
        times.append(time.perf_counter() - started)
        error = info.value
    return error, min(times)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (b"\xff\xfe a cat", "not valid UTF-8"),
        ("a\x00cat", "NUL"),
        ("", "empty"),
        (" \t\n ", "empty"),
        ("x" * 2049, "at most 2048 bytes"),
    ],
    ids=["utf8", "nul", "empty", "whitespace", "too-long"],
)
def test_bad_prompts_are_refused_within_100_ms(served, prompt, message):
    """R2."""
    before = executions(served.url, DENOISER)
    error, seconds = rejected(served.url, prompt)
    assert error.status == "INVALID_ARGUMENT" and str(error).startswith("prompt: ") and message in str(error)
    assert seconds < 0.1
    assert executions(served.url, DENOISER) == before


def test_output_size_is_refused_before_any_work(served):
    """R4: 33 x 512 x 512 x 3 bytes of frames fit max_output_bytes; twice that (return_frames) does not."""
    big = {"height": 512, "width": 512, "num_frames": 33, "num_inference_steps": 2}
    before = executions(served.url, DENOISER)
    error, _ = rejected(served.url, "a cat", return_frames=True, **big)
    assert error.status == "INVALID_ARGUMENT"
    assert f"at most {LIMITS['max_output_bytes']} allowed" in str(error) and "twice with return_frames" in str(error)
    assert executions(served.url, DENOISER) == before


def test_a_bad_request_among_batched_ones_fails_alone(served):
    """R5: four requests at once (the text encoder batches their prompts), one of them invalid:
    it alone fails; the others get the bytes they get on their own."""
    prompts = ["a red cat", "a blue dog", "a green bird"]
    alone = [Client(served.url).generate(p, seed=i, **SMALL).video for i, p in enumerate(prompts)]
    results: dict[int, object] = {}

    def run(index: int) -> None:
        try:
            if index == 3:
                Client(served.url).generate("bad", **{**SMALL, "height": 33})
            else:
                results[index] = Client(served.url).generate(prompts[index], seed=index, **SMALL).video
        except ClientError as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [results[i] for i in range(3)] == alone
    assert isinstance(results[3], ClientError) and results[3].status == "INVALID_ARGUMENT"


def test_a_huge_message_is_refused_cleanly(served):
    """R6: a 256 MB prompt gets a clean error, and the next small request works."""
    from wan_triton.client import CHANNEL_ARGS

    client = grpcclient.InferenceServerClient(served.url, channel_args=CHANNEL_ARGS)
    prompt = grpcclient.InferInput("prompt", [1, 1], "BYTES")
    prompt.set_data_from_numpy(np.array([[b"x" * (256 << 20)]], dtype=np.object_))
    before = executions(served.url, DENOISER)
    with pytest.raises(Exception) as info:
        client.infer("wan_t2v", [prompt], client_timeout=120)
    assert "prompt" in str(info.value) and "at most 2048 bytes" in str(info.value)
    assert executions(served.url, DENOISER) == before
    assert Client(served.url).generate("a cat", **SMALL).video


def test_urls_in_inputs_are_never_fetched(served):
    """R7: URL-looking text is only text: a listener those URLs point at sees no connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    urls = [f"http://127.0.0.1:{port}/cat.png", f"file:///etc/passwd http://localhost:{port}", "169.254.169.254"]
    for url in urls:
        assert Client(served.url).generate(url, **{**SMALL, "negative_prompt": url}).video
    with pytest.raises(TimeoutError):
        listener.accept()
    listener.close()


def test_a_full_queue_refuses_at_once(served):
    """R12: more requests than instances plus queue: the rest are refused at once (UNAVAILABLE),
    every accepted one completes, and the server serves the next one."""
    options = {**SMALL, "height": 64, "width": 96, "num_frames": 17, "num_inference_steps": 20}
    outcomes: list[tuple[str, float]] = []

    def run(index: int) -> None:
        started = time.perf_counter()
        try:
            Client(served.url, retries=0).generate(f"request {index}", seed=index, **options)
            outcomes.append(("ok", time.perf_counter() - started))
        except ClientError as exc:
            outcomes.append((f"{exc.status}: {exc}", time.perf_counter() - started))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(14)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    refused = [(o, s) for o, s in outcomes if o != "ok"]
    assert len(outcomes) == 14 and refused, outcomes
    assert all(o.startswith("UNAVAILABLE") and "queue" in o for o, _ in refused), refused
    assert max(s for _, s in refused) < 1.0  # refused at once, not after waiting
    assert len(outcomes) - len(refused) >= 4 + LIMITS["max_queue_size"] - 2  # instances + queue (arrival jitter)
    assert Client(served.url).generate("after", **SMALL).video


def test_a_job_past_the_deadline_is_stopped(served):
    """R12: a job that would run ~50 s stops at the server's deadline (10 s here) with a clear
    error; the server is free for the next request right away."""
    started = time.perf_counter()
    with pytest.raises(ClientError) as info:
        Client(served.url, retries=0).generate("slow", **{**LONG, "height": 512, "width": 512})
    seconds = time.perf_counter() - started
    assert info.value.status == "CANCELLED" and "deadline" in str(info.value), info.value
    assert LIMITS["deadline_s"] <= seconds < LIMITS["deadline_s"] + 10
    started = time.perf_counter()
    assert Client(served.url).generate("after", **SMALL).video
    assert time.perf_counter() - started < 3
