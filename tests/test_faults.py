"""Faults against the live server: a stage's process killed (R13, R15).

Tritonserver 2.51 neither restarts a Python-backend stub that died nor reports it: requests fail
("Stub process ... is not healthy") while every health endpoint says ready. `wan-triton serve`
watches the stubs and restarts the server when one dies (TritonServer.supervise).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import urllib.request

import pytest
from conftest import SMALL

from wan_triton.client import Client, ClientError
from wan_triton.serving.server import stub_processes


def ready(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def recovering(served):
    """Whatever the assertions inside say, leave the shared server ready again for the tests after."""
    try:
        yield
    finally:
        time.sleep(2)  # past the supervisor's next look, so the restart has begun
        Client(served.url).wait_ready(300)


def test_a_killed_stage_fails_cleanly_then_the_server_recovers(served):
    """R13 + R15: kill -9 the VAE decoder's process. The next request gets an error at once (the
    stage named, or UNAVAILABLE once the restart began), never a hang; readiness goes down while
    the server restarts, comes back, and requests succeed again."""
    stubs = stub_processes(served.repository)
    (victim,) = [pid for pid, line in stubs.items() if "/vae_decoder/" in line]
    os.kill(victim, signal.SIGKILL)
    started = time.perf_counter()
    with recovering(served):
        try:
            Client(served.url, retries=0, timeout_s=60).generate("a cat", **SMALL)
            raise AssertionError("a request through a dead stage succeeded")
        except ClientError as exc:
            # Which error depends on who is first: the request (the dead stage named) or the
            # restart (a stage refusing the call, or Triton refusing the request: UNAVAILABLE).
            assert "vae_decoder" in str(exc) or exc.status in ("UNAVAILABLE", "NOT_FOUND"), exc
        assert time.perf_counter() - started < 10
        deadline = time.monotonic() + 30
        while ready(served.http) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not ready(served.http), "readiness must go down while the server restarts"
    assert Client(served.url).generate("a cat", **SMALL).video
    assert not set(stubs) & set(stub_processes(served.repository))  # every stub is new


def test_a_stage_dying_mid_job_ends_the_job_and_leaves_no_process(served):
    """R13 at its worst: the denoiser dies while a job streams from it. Tritonserver 2.51's BLS
    call then never returns; the restart ends the job (an error within the old server's exit
    timeout, not a hang) and reaps the entry stub that stayed blocked in it."""
    from conftest import LONG

    stubs = stub_processes(served.repository)
    (victim,) = [pid for pid, line in stubs.items() if "/denoiser/" in line]
    steps = []

    def kill_after_two(progress) -> None:
        steps.append(progress.step)
        if progress.step == 2:
            os.kill(victim, signal.SIGKILL)

    started = time.perf_counter()
    with recovering(served):
        try:
            Client(served.url, retries=0, timeout_s=300).generate_stream("long", on_progress=kill_after_two, **LONG)
            raise AssertionError("a job whose denoiser died succeeded")
        except ClientError as exc:
            assert exc.status in ("UNAVAILABLE", "INTERNAL", ""), exc
        assert time.perf_counter() - started < 120 and steps[:2] == [1, 2]
    assert Client(served.url).generate("a cat", **SMALL).video
    assert not set(stubs) & set(stub_processes(served.repository))  # none of the old server's left


def test_a_failed_restart_is_retried_then_given_up_and_a_signal_ends_it(tmp_path, monkeypatch):
    """TritonServer.restart without a tritonserver: a start that fails (a stub killed while
    loading) is retried; past the attempts it raises (serve exits non-zero, the orchestrator
    restarts the container); a stop signal during a restart ends it without a new start."""
    import threading

    from wan_triton.serving.server import RESTART_ATTEMPTS, TritonServer

    server = TritonServer(tmp_path, models=[])
    starts, stopping = [], threading.Event()
    monkeypatch.setattr(server, "stop", lambda **_: None)

    def start(outcomes: list) -> None:
        def run(stopping=None):
            starts.append(1)
            if outcomes.pop(0):
                raise RuntimeError("tritonserver exited with 1")
            return server

        monkeypatch.setattr(server, "start", run)

    start([True, False])
    assert server.restart(stopping, log=lambda _: None) and len(starts) == 2
    starts.clear()
    start([True] * RESTART_ATTEMPTS)
    with pytest.raises(RuntimeError, match="did not come back"):
        server.restart(stopping, log=lambda _: None)
    assert len(starts) == RESTART_ATTEMPTS
    starts.clear()
    stopping.set()
    assert not server.restart(stopping, log=lambda _: None) and starts == []
