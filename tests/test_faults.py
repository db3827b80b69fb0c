"""Faults against the live server: a stage's process killed or hung (R13, R15), and the supervisor
that reloads it (TritonServer.supervise, serving/supervisor.py).

Tritonserver 2.51 neither restarts a Python-backend stub that died nor reports it: requests fail
("Stub process ... is not healthy") while every health endpoint says ready, and an entry waiting in
a BLS call on a dead stage never gets an answer. `wan-triton serve` counts each model's stubs,
reloads the one that lost a stub (the others keep serving), ends the entries stuck on it, and
restarts the whole server only when a reload fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import LIMITS, LONG, SMALL, serve

from wan_triton.client import Client, ClientError
from wan_triton.contract import Family
from wan_triton.serving import cancel, models, supervisor
from wan_triton.serving.server import TritonServer, parent, stub_processes

SEEN: dict[int, str] = {}  # every stub the tests below looked at: none may leave a region behind


def pid_of(repository: Path, model: str) -> int:
    stubs = stub_processes(repository)
    SEEN.update(stubs)
    (pid,) = [pid for pid, line in stubs.items() if f"/{model}/" in line]
    return pid


def regions(stubs: dict[int, str]) -> set[str]:
    return {word for line in stubs.values() for word in line.split() if "shm_region" in word}


def model_ready(http_port: int, model: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/{model}/ready", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def replaced(served, model: str, old: int, timeout: float = 120) -> int:
    """The pid of `model`'s new stub, once the supervisor reloaded it (or restarted tritonserver)
    and every served model is ready (an entry it reloaded with it may take longer)."""
    served_models = models.served_models(Family.from_checkpoint(served.checkpoint))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stubs = stub_processes(served.repository)
        pids = [pid for pid, line in stubs.items() if f"/{model}/" in line]
        if old not in stubs and pids and all(model_ready(served.http, name) for name in served_models):
            return pids[0]
        time.sleep(0.2)
    raise AssertionError(f"{model} was not reloaded within {timeout} s")


def crashes(served) -> list[str]:
    """What serve said each time its tritonserver exited without being asked to."""
    log = (served.repository.parent / "serve.log").read_text()
    return [line for line in log.splitlines() if "tritonserver exited by itself" in line]


def gone(names: set[str], timeout: float = 30) -> bool:
    """The shared-memory regions `names` are removed (the supervisor frees a dead stub's)."""
    deadline = time.monotonic() + timeout
    while any((Path("/dev/shm") / name).exists() for name in names) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not any((Path("/dev/shm") / name).exists() for name in names)


def test_an_idle_stage_killed_is_reloaded_alone(served):
    """R15: kill -9 the VAE decoder's process while nothing runs. Only that model reloads: every
    other stub keeps its process, the dead one's shared-memory region goes, and the next request
    succeeds. (Nothing was in flight, so the old version unloads: the shared server's strict
    shutdown check at the end of the session shows nothing stayed loaded.)"""
    before = stub_processes(served.repository)
    victim = pid_of(served.repository, "vae_decoder")
    os.kill(victim, signal.SIGKILL)
    started = time.perf_counter()
    new = replaced(served, "vae_decoder", victim)
    reloaded_s = time.perf_counter() - started
    after = stub_processes(served.repository)
    assert set(before) - set(after) == {victim}, "only the dead stub's model was reloaded"
    assert new in after and len(after) == len(before)
    assert gone(regions({victim: before[victim]}))
    assert Client(served.url).generate("a cat", **SMALL).video
    assert reloaded_s < 120


@pytest.fixture(scope="module")
def fragile(tiny_checkpoint, exported_repository, tmp_path_factory):
    """A server of its own for faults with requests in flight: tritonserver 2.51 never releases
    what a dead stub had in flight, so its shutdown waits out the exit timeout (checked below).
    A 5 s watchdog grace (serve --watchdog-grace-s) past the 10 s deadline."""
    root = tmp_path_factory.mktemp("fragile")
    served = serve(tiny_checkpoint, exported_repository, root, LIMITS, ("--watchdog-grace-s", "5"))
    yield served
    served.process.send_signal(signal.SIGTERM)
    try:
        code = served.process.wait(120)
    except subprocess.TimeoutExpired:
        served.process.kill()
        raise
    log = (root / "serve.log").read_text()
    pinned = "had requests in a process that died" in log
    # Exit code 1 exactly when serve said why: tritonserver's exit timeout, for what it keeps.
    assert code == (1 if pinned else 0), log[-3000:]
    assert not stub_processes(served.repository), "every stub ended"
    ours = {pid: line for pid, line in SEEN.items() if str(served.repository) in line}
    assert ours and gone(regions(ours), timeout=0)


def test_a_request_through_a_dead_stage_fails_fast_then_service_returns(fragile):
    """R13 + R15: the first request after the VAE decoder died gets an error within seconds (the
    supervisor ends the entry stuck on the dead stage: UNAVAILABLE, so clients retry), and the
    service is back within a minute; the text encoder and the denoiser never stopped."""
    keep = {model: pid_of(fragile.repository, model) for model in ("text_encoder", "denoiser")}
    victim = pid_of(fragile.repository, "vae_decoder")
    os.kill(victim, signal.SIGKILL)
    started = time.perf_counter()
    with pytest.raises(ClientError) as failed:
        Client(fragile.url, retries=0, timeout_s=60).generate("a cat", **SMALL)
    # UNAVAILABLE: the entry stuck on the dead stage was ended, or the stage was reloading.
    assert failed.value.status == "UNAVAILABLE" or "vae_decoder" in str(failed.value), failed.value
    assert time.perf_counter() - started < 10
    replaced(fragile, "vae_decoder", victim)
    assert Client(fragile.url, retries=20).generate("a cat", **SMALL).video
    assert {model: pid_of(fragile.repository, model) for model in keep} == keep


def test_a_stage_dying_mid_job_ends_that_job_at_once(fragile):
    """R13 at its worst: the denoiser dies while a job streams from it. The job ends within seconds
    with UNAVAILABLE (not at its deadline, not at a restart), the denoiser is reloaded, the next
    job succeeds, and the text encoder kept its process.

    Unless the kill lands while the stub holds a lock in its shared memory: then tritonserver 2.51
    aborts as a whole (boost::interprocess::lock_exception; most runs here, triton-inference-server/
    server#8882), and serve restarts it, saying so; everything else holds."""
    before = crashes(fragile)
    keep = pid_of(fragile.repository, "text_encoder")
    victim = pid_of(fragile.repository, "denoiser")
    steps, killed = [], []

    def kill_after_two(progress) -> None:
        steps.append(progress.step)
        if progress.step == 2:
            os.kill(victim, signal.SIGKILL)
            killed.append(time.perf_counter())

    with pytest.raises(ClientError) as failed:
        Client(fragile.url, retries=0, timeout_s=120).generate_stream("long", on_progress=kill_after_two, **LONG)
    assert failed.value.status == "UNAVAILABLE", failed.value
    assert steps[:2] == [1, 2] and time.perf_counter() - killed[0] < 10
    replaced(fragile, "denoiser", victim)
    assert Client(fragile.url, retries=20).generate("a cat", **SMALL).video
    crashed = crashes(fragile)[len(before) :]
    if crashed:
        assert len(crashed) == 1 and "lock_exception" in crashed[0], crashed
    else:
        assert pid_of(fragile.repository, "text_encoder") == keep


def test_a_job_in_a_hung_stage_is_ended_by_the_watchdog(fragile):
    """A stage that stops answering (SIGSTOP: alive, so nothing else notices) holds its job past
    the deadline: the watchdog ends the job's entry and the hung stage once the job is the grace
    past its deadline, and reloads both."""
    victim = pid_of(fragile.repository, "denoiser")

    def hang_after_one(progress) -> None:
        if progress.step == 1:
            os.kill(victim, signal.SIGSTOP)

    started = time.perf_counter()
    try:
        with pytest.raises(ClientError) as failed:
            Client(fragile.url, retries=0, timeout_s=120).generate_stream("long", on_progress=hang_after_one, **LONG)
    finally:
        if victim in stub_processes(fragile.repository):
            os.kill(victim, signal.SIGCONT)
    took = time.perf_counter() - started
    assert failed.value.status == "UNAVAILABLE", failed.value
    assert LIMITS["deadline_s"] + 5 <= took < LIMITS["deadline_s"] + 5 + 15, took
    replaced(fragile, "denoiser", victim)
    assert Client(fragile.url, retries=20).generate("a cat", **SMALL).video


def test_tritonserver_dying_is_restarted(fragile):
    """Tritonserver itself gone (kill -9 here; 2.51 also aborts by itself, see above): serve says
    so, restarts it, and serves again; no stub or shared-memory region of the old one is left."""
    stubs = stub_processes(fragile.repository)
    SEEN.update(stubs)
    (triton,) = {parent(pid) for pid in stubs}
    before = crashes(fragile)
    os.kill(triton, signal.SIGKILL)
    assert Client(fragile.url, retries=60).generate("a cat", **SMALL).video
    said = f"wan-triton serve: tritonserver exited by itself with {-signal.SIGKILL}"
    assert crashes(fragile)[len(before) :] == [said]
    assert not set(stubs) & set(stub_processes(fragile.repository))
    assert gone(regions(stubs))


def test_markers_say_who_runs_what_and_the_supervisor_reads_them(tmp_path, monkeypatch):
    """cancel.Running, as the supervisor sees it: the entry's pid, its deadline and the stages it
    waits on; stuck when a stage it waits on lost its process or the grace past its deadline is up."""
    monkeypatch.setattr(cancel, "ROOT", tmp_path)
    with cancel.running(deadline_s=100) as marker:
        with cancel.waiting_on("denoiser"), cancel.waiting_on("vae_decoder"):  # nested calls
            (job,) = [cancel.Running.read(path) for path in cancel.running_jobs(tmp_path)]
            assert job.pid == os.getpid() and job.stages == ["denoiser", "vae_decoder"]
            assert list(supervisor.stuck_jobs(tmp_path, set())) == []
            (stuck,) = supervisor.stuck_jobs(tmp_path, {"denoiser"})
            assert "denoiser" in stuck.why and stuck.hung == ()
            (late,) = supervisor.stuck_jobs(tmp_path, set(), now=marker.until + 61, grace_s=60)
            assert late.hung == ("denoiser", "vae_decoder")
            assert supervisor.busy(tmp_path) == supervisor.Busy({os.getpid()}, {"denoiser", "vae_decoder"})
        assert cancel.Running.read(marker.path).stages == []
        supervisor.forget_dead_jobs(tmp_path, live={os.getpid()})
        assert marker.path.exists()
        supervisor.forget_dead_jobs(tmp_path, live=set())
        assert not marker.path.exists()
    assert cancel.running_jobs(tmp_path) == []


def test_stub_counts_come_from_triton_configs():
    repository = Path("/srv/repo")
    line = "/x/triton_python_backend_stub /srv/repo/denoiser/1/model.py region 1048576 1048576 7 /x 336 denoiser_0_0"
    assert supervisor.model_of(line, repository) == "denoiser"
    assert supervisor.model_of("/x/stub /elsewhere/denoiser/1/model.py", repository) == ""
    cpu = {"instance_group": [{"kind": "KIND_CPU", "count": 4, "gpus": []}]}
    gpu = {"instance_group": [{"kind": "KIND_GPU", "count": 2, "gpus": [0, 1, 2]}]}
    assert supervisor.instances(cpu) == 4 and supervisor.instances(gpu) == 6
    live = supervisor.per_model({1: line}, repository)
    assert supervisor.lost_models({"denoiser": 1, "text_encoder": 1}, live) == {"text_encoder"}


def test_a_failed_reload_falls_back_to_a_full_restart(tmp_path, monkeypatch):
    """TritonServer.supervise without a tritonserver: a model short of stubs is reloaded; when the
    reload fails, the whole server restarts; a stop ends the loop."""
    server = TritonServer(tmp_path, models=["denoiser"])
    server.process = subprocess.Popen(["sleep", "60"])
    stopping, calls = threading.Event(), []
    monkeypatch.setattr(server, "expected_instances", lambda: {"denoiser": 1})
    monkeypatch.setattr(server, "stubs", lambda: {})  # the denoiser's stub is gone
    monkeypatch.setattr(server, "reload", lambda models, *_: calls.append(("reload", models)) or False)

    def restart(*_) -> bool:
        calls.append(("restart",))
        stopping.set()
        return True

    monkeypatch.setattr(server, "restart", restart)
    monkeypatch.setattr(server, "stop", lambda **_: 0)
    try:
        assert server.supervise(stopping, log=lambda _: None) == 0
    finally:
        server.process.kill()
        shutil.rmtree(server.run_dir)
    assert calls == [("reload", ["denoiser"]), ("restart",)]


def test_a_reload_gives_up_when_tritonserver_dies_under_it(tmp_path, monkeypatch):
    """TritonServer.reload without a tritonserver: a load that never answers (seen: the dead
    server's orphaned stubs hold its accepted connection) ends the reload once the server process
    is gone, not at the load's 20-minute timeout."""
    server = TritonServer(tmp_path, models=["denoiser"])
    server.process = subprocess.Popen(["sleep", "1"])
    never = threading.Event()
    monkeypatch.setattr(server, "stubs", lambda: {})
    monkeypatch.setattr(server, "_admin", lambda path, *_: b"" if path.endswith("/unload") else never.wait(30))
    started = time.monotonic()
    try:
        assert not server.reload(["denoiser"], threading.Event(), log=lambda _: None)
        assert time.monotonic() - started < 10
    finally:
        never.set()
        server.process.kill()
        shutil.rmtree(server.run_dir)


def test_a_failed_restart_is_retried_then_given_up_and_a_signal_ends_it(tmp_path, monkeypatch):
    """TritonServer.restart without a tritonserver: a start that fails (a stub killed while
    loading) is retried; past the attempts it raises (serve exits non-zero, the orchestrator
    restarts the container); a stop signal during a restart ends it without a new start."""
    from wan_triton.serving.server import RESTART_ATTEMPTS

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


def test_sigterm_ends_a_job_longer_than_the_drain_within_a_step(tiny_checkpoint, exported_repository, tmp_path):
    """serve --drain-s: a job still running when the drain is over (a 14B job runs tens of minutes,
    no grace period waits for it) ends within a step with UNAVAILABLE (retry elsewhere); the server
    then unloads every model and exits 0, no stub left."""
    served = serve(tiny_checkpoint, exported_repository, tmp_path, None, ("--drain-s", "1"))
    started, ended = threading.Event(), {}

    def running() -> None:
        try:
            Client(served.url, retries=0).generate_stream("long", on_progress=lambda _: started.set(), **LONG)
        except ClientError as exc:
            ended["error"], ended["at"] = exc, time.monotonic()

    job = threading.Thread(target=running)
    job.start()
    assert started.wait(60)
    signalled = time.monotonic()
    served.process.send_signal(signal.SIGTERM)
    job.join(60)
    assert served.process.wait(120) == 0
    assert ended["error"].status == "UNAVAILABLE" and "stopped before the job finished" in str(ended["error"])
    assert ended["at"] - signalled < 1 + 5, "within a few steps of the drain's end, not at the job's end"
    assert not stub_processes(served.repository)
