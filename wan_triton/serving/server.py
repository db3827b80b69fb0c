"""Start and stop a real `tritonserver`: the NGC container's when on PATH, else nvidia-pytriton's.

Outside the container the Python backend needs three things (shared/ENVIRONMENT.md): a backend
folder holding the stub built for this Python, this interpreter's libpython and the wheel's
bundled libraries on LD_LIBRARY_PATH, and this environment's `bin/` first on PATH so the stub's
embedded Python imports this environment's packages.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import types
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from wan_triton.contract import Limits
from wan_triton.parallel import Parallel
from wan_triton.serving import cancel, supervisor
from wan_triton.serving.settings import RUN_DIR_ENV, SHARED_ROOT, ServeSettings

if TYPE_CHECKING:
    from wan_triton.acceleration import Acceleration
    from wan_triton.lora import AllowList

DRAIN_TIMEOUT_S = 30.0  # serve --drain-s: how long running jobs may take to finish after SIGTERM
STOP_WAIT_S = 10.0  # then how long the jobs still running have to end (within a step, cancelled)
RESTART_ATTEMPTS = 3
# Loading a full-size checkpoint (hashing it against the exports, moving it to the GPU, warming up)
# takes minutes; deploy/'s startup probes allow the same.
START_TIMEOUT_S = 1200.0
# What nobody on the ports may use (R22, R26): loading a model with a `file:` override runs its
# code; unloading takes the pipeline down; shared-memory registration maps host or device memory
# into the server; logging and trace settings change what the server writes. Only a request with
# ADMIN_HEADER set to this server's key (which only `serve` knows) may.
RESTRICTED = "model-repository,shared-memory,logging,trace"
ADMIN_HEADER = "wan-triton-admin-key"
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"  # what tritonserver's gRPC side reads
BACKEND_CACHE = Path(os.environ.get("WAN_TRITON_CACHE", Path.home() / ".cache" / "wan-triton"))


def default_repository(checkpoint: str | Path | None) -> Path:
    """Where `serve` without --repository builds and serves its repository: one folder per checkpoint in
    the cache (its exports reused from run to run), never the checked-in model_repository/, whose
    configs are the CPU ones a test compares with the generated."""
    if checkpoint is None:
        return BACKEND_CACHE / "repositories" / "trained-t2v"
    resolved = Path(checkpoint).resolve()
    return BACKEND_CACHE / "repositories" / f"{resolved.name}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:12]}"


def served_checkpoint(checkpoint: str | Path | None) -> Path:
    """The checkpoint `serve` serves: the one given, or the embedded default (the trained one)."""
    if checkpoint is None:
        from wan_triton.checkpoints.train import TRAINED

        checkpoint = TRAINED
    return Path(checkpoint).resolve()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Binary:
    """A tritonserver executable and how to run it here."""

    path: Path
    backend_directory: Path | None  # None: the server's default (the NGC container's)
    env: dict[str, str] = field(default_factory=dict)


def find_tritonserver() -> Binary:
    on_path = shutil.which("tritonserver")
    if on_path:
        return Binary(Path(on_path), None)
    # Found, not imported: pytriton's own Python API (and its dependencies) is not needed for its binary.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise RuntimeError("no tritonserver on PATH and nvidia-pytriton is not installed")
    root = Path(spec.origin).parent / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise RuntimeError(f"nvidia-pytriton has no Python backend stub for Python {version}")
    backends = BACKEND_CACHE / f"backends-py{version}"
    python = backends / "python"
    if not (python / "triton_python_backend_stub").is_file():
        python.mkdir(parents=True, exist_ok=True)
        shutil.copytree(root / "backends" / "python", python, dirs_exist_ok=True)
        shutil.copy2(stub, python / "triton_python_backend_stub")
    libs = [sysconfig.get_config_var("LIBDIR"), str(root.parent.parent / "nvidia_pytriton.libs")]
    env = {
        "LD_LIBRARY_PATH": os.pathsep.join([*libs, os.environ.get("LD_LIBRARY_PATH", "")]),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    return Binary(root / "bin" / "tritonserver", backends, env)


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""  # gone


def stub_processes(repository: Path) -> dict[int, str]:
    """Python-backend stubs running for models under `repository`: pid -> command line."""
    found = {}
    for folder in Path("/proc").glob("[0-9]*"):
        text = command_line(int(folder.name))
        if "triton_python_backend_stub" in text and str(repository) in text:
            found[int(folder.name)] = text
    return found


def parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def reap(stubs: dict[int, str], server_pid: int) -> None:
    """After a tritonserver exited: kill its stubs that outlived it and free their shared memory.
    Seen: an entry stub blocked in a BLS call to a stage that had died stayed alive after the
    server exited, and a server that hit its exit timeout left its stubs' regions behind."""
    for pid, line in stubs.items():
        if command_line(pid) == line and parent(pid) != server_pid:
            with contextlib.suppress(ProcessLookupError):  # it exited on its own meanwhile
                os.kill(pid, signal.SIGKILL)
        for word in line.split():
            if word.startswith("triton_python_backend_shm_region"):
                (Path("/dev/shm") / word).unlink(missing_ok=True)


CRASH_WORDS = re.compile(r"terminate called|what\(\)|Signal \(\d+\) received|Segmentation fault")


def last_words(log: Path | None, start: int = 0, tail: int = 16384) -> str:
    """Why a tritonserver died, from what its log got after `start` (where this run began): its
    crash lines (`terminate called ...`, `what(): ...`, `Signal (6) received.`), if any."""
    if log is None or not log.exists():
        return ""
    with log.open("rb") as file:
        file.seek(max(start, log.stat().st_size - tail))
        lines = file.read().decode("utf-8", "replace").splitlines()
    return "; ".join(line.strip() for line in lines if CRASH_WORDS.search(line))


def reap_orphans(keep: int) -> None:
    """As PID 1 (a container's `serve`), collect the exit status of processes re-parented to us
    (stubs that outlived their tritonserver), which would otherwise stay zombies. `keep`: our own
    tritonserver, whose status Popen collects."""
    if os.getpid() != 1:
        return
    while True:
        try:
            found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if found is None or found.si_pid in (0, keep):
            return
        os.waitpid(found.si_pid, 0)


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the thread that started it goes (Linux)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class Ports:
    grpc: int
    http: int
    metrics: int

    @classmethod
    def free(cls) -> Ports:
        return cls(free_port(), free_port(), free_port())


class TritonServer:
    """One tritonserver process over a model repository; a context manager."""

    def __init__(
        self,
        repository: str | Path,
        ports: Ports | None = None,
        settings: ServeSettings | None = None,
        log: Path | None = None,
        extra_args: tuple[str, ...] = (),
        models: list[str] | None = None,
        watchdog_grace_s: float = supervisor.WATCHDOG_GRACE_S,
        drain_s: float = DRAIN_TIMEOUT_S,
    ) -> None:
        """`settings`: what serve decided, written into this server's run folder for its stubs.
        `models`: what to load (explicit model control); by default what the settings' checkpoint
        serves (models.served_models: its tasks' entries and their stages)."""
        self.repository = Path(repository).resolve()
        self.ports = ports or Ports.free()
        self.binary = find_tritonserver()
        # This server's jobs: cancel flags, running markers, the draining mark (serving/cancel.py).
        # And what serve decided (serving/settings.py), the one thing its stubs are told by the environment.
        self.run_dir = Path(tempfile.mkdtemp(prefix="wan-triton-run-", dir=SHARED_ROOT))
        # One secret per server: the entries send it to the stages (R27), and it unlocks the
        # restricted APIs for `serve` itself. It lives in the run folder's settings only.
        self.key = secrets.token_urlsafe(32)
        settings = dataclasses.replace(settings or ServeSettings(), stage_key=self.key)
        settings.write(self.run_dir)
        self.env = {**os.environ, **self.binary.env, RUN_DIR_ENV: str(self.run_dir)}
        self.log_path = log
        self.log_start = 0  # where the running tritonserver's part of the log begins
        self.extra_args = extra_args
        if models is None and settings.checkpoint:
            from wan_triton.contract import Family
            from wan_triton.serving.models import served_models

            models = served_models(Family.from_checkpoint(settings.checkpoint))
        self.models = models
        self.process: subprocess.Popen | None = None
        self.known_stubs: dict[int, str] = {}  # every stub seen while supervising, dead ones too
        self.watchdog_grace_s = watchdog_grace_s
        self.drain_s = drain_s
        self.pinned: set[str] = set()  # models reloaded while requests were in their dead stubs
        self.retired: dict[int, str] = {}  # stubs of a model's version replaced by a reload

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    def command(self) -> list[str]:
        command = [
            str(self.binary.path),
            f"--model-repository={self.repository}",
            f"--grpc-port={self.ports.grpc}",
            f"--http-port={self.ports.http}",
            f"--metrics-port={self.ports.metrics}",
            "--exit-timeout-secs=30",
            f"--grpc-restricted-protocol={RESTRICTED}:{ADMIN_HEADER}={self.key}",
            f"--http-restricted-api={RESTRICTED}:{ADMIN_HEADER}={self.key}",
            *self.extra_args,
        ]
        if self.models is not None:
            command += ["--model-control-mode=explicit", *(f"--load-model={name}" for name in self.models)]
        if self.binary.backend_directory is not None:
            command.append(f"--backend-directory={self.binary.backend_directory}")
        return command

    def launch(self) -> subprocess.Popen:
        """Start the process without waiting for it to be ready."""
        # Appended: a restart after a crash keeps the crash's own words (last_words).
        out = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self.log_start = out.tell() if self.log_path else 0
        # Its own session: a signal to `serve`'s process group (Ctrl-C in a terminal, a group kill)
        # reaches `serve`, which drains first, and not tritonserver behind its back.
        # And it dies with `serve` (PR_SET_PDEATHSIG), so a `serve` killed outright leaves no server.
        self.process = subprocess.Popen(
            self.command(),
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        return self.process

    def start(self, timeout: float = START_TIMEOUT_S, stopping: threading.Event | None = None) -> TritonServer:
        """Start and wait until Triton reports every model ready; with `stopping`, give up (stop
        it) as soon as that is set, rather than wait out a load that nobody wants any more."""
        self.launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()  # reaps what it left behind
                raise RuntimeError(f"tritonserver exited with {self.process.returncode}; log: {self.log_path}")
            if stopping is not None and stopping.is_set():
                self.stop(drain_s=0)
                raise RuntimeError("stopped while loading")
            # Known from birth: a stub killed before the supervisor's first look still has its
            # shared-memory region freed (reap), which only its command line names.
            self.known_stubs |= self.stubs()
            if self.ready():
                self.known_stubs |= self.stubs()
                return self
            reap_orphans(self.process.pid)
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"tritonserver not ready after {timeout:.0f} s; log: {self.log_path}")

    def ready(self) -> bool:
        url = f"http://127.0.0.1:{self.ports.http}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # loopback only
                return response.status == 200
        except OSError:
            return False

    def drain(self, timeout: float = DRAIN_TIMEOUT_S) -> list[Path]:
        """Start no new job, wait up to `timeout` for the running ones; return those still running.

        Needed because a stopping tritonserver refuses new requests, BLS ones included: a job
        between two stages would fail ("Server not ready") instead of finishing.
        """
        (self.run_dir / cancel.DRAINING).touch()
        deadline = time.monotonic() + timeout
        while cancel.running_jobs(self.run_dir) and time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                break
            time.sleep(0.2)
        return cancel.running_jobs(self.run_dir)

    def stop(self, timeout: float = 60.0, drain_s: float | None = None) -> int | None:
        """Drain (`drain_s`, default the server's), end the jobs still running (each stops within a
        step, its client told UNAVAILABLE: retry elsewhere), then SIGTERM (Triton unloads every model),
        SIGKILL only past `timeout`. A 14B job runs for tens of minutes: no grace period waits for it."""
        if self.process is None:
            return None
        if self.process.poll() is not None:  # crashed, signalled, or exited while loading
            reap({**self.known_stubs, **self.orphaned_stubs()}, self.process.pid)
            self._forget()
            return self.process.returncode
        stubs = {**self.known_stubs, **self.stubs()}
        if self.drain(self.drain_s if drain_s is None else drain_s):
            (self.run_dir / cancel.STOPPING).touch()
            self.drain(STOP_WAIT_S)
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            (self.run_dir / cancel.DRAINING).unlink(missing_ok=True)
            (self.run_dir / cancel.STOPPING).unlink(missing_ok=True)
            # `known_stubs` holds the ones that died meanwhile (kill -9): their regions go too.
            reap({**stubs, **self.orphaned_stubs()}, self.process.pid)
            self._forget()

    def _forget(self) -> None:
        """What a stopped tritonserver leaves to forget: its stubs, pins and retired versions."""
        self.known_stubs, self.pinned, self.retired = {}, set(), {}
        # A killed entry's running marker would make every later drain wait its full time.
        for marker in cancel.running_jobs(self.run_dir):
            marker.unlink(missing_ok=True)

    def orphaned_stubs(self) -> dict[int, str]:
        """Stubs of this repository that no running tritonserver owns any more."""
        return {
            pid: line
            for pid, line in stub_processes(self.repository).items()
            if "tritonserver" not in command_line(parent(pid)) or parent(pid) == self.process.pid
        }

    def stubs(self) -> dict[int, str]:
        """This server's Python-backend stubs (children of its tritonserver): pid -> command line."""
        if self.process is None:
            return {}
        return {pid: line for pid, line in stub_processes(self.repository).items() if parent(pid) == self.process.pid}

    def supervise(self, stopping: threading.Event, log=print) -> int | None:
        """Serve until `stopping` is set (then drain and stop) or tritonserver exits.

        A model that lost a stub process is reloaded alone (the others keep serving); a job
        stuck on it, or past its deadline, has its entry's process ended first, so its client gets
        an error at once and that entry is reloaded too. When a reload fails, the whole server
        restarts: its endpoints close (not ready) until every model is loaded again (R15).
        """
        expected = self.expected_instances()
        while not stopping.wait(1.0):
            reap_orphans(self.process.pid if self.process else 0)
            if self.process is None:
                return None
            if self.process.poll() is not None:
                # Nobody asked it to stop. Tritonserver 2.51 aborts as a whole when a stub dies
                # holding a lock in its shared memory (boost::interprocess::lock_exception, seen with
                # a denoiser killed mid-step; triton-inference-server/server#8882, open on 2.55).
                why = last_words(self.log_path, self.log_start)
                log(f"tritonserver exited by itself with {self.process.returncode}{f' ({why})' if why else ''}")
                if not self._restart(stopping, log):
                    return 1 if stub_processes(self.repository) else 0
                expected = self.expected_instances()
                continue
            current = self.stubs()  # one scan of /proc a tick
            self.known_stubs |= current
            lost = supervisor.lost_models(expected, supervisor.per_model(current, self.repository))
            for stuck in supervisor.stuck_jobs(self.run_dir, lost, grace_s=self.watchdog_grace_s):
                entry = self._model_of(current.get(stuck.job.pid, ""))
                log(f"ending {entry} process {stuck.job.pid}: its job is {stuck.why}")
                doomed = [stuck.job.pid]
                if stuck.hung:
                    log(f"ending {', '.join(stuck.hung)}: not answering a job past its deadline")
                    doomed += [pid for pid, line in current.items() if self._model_of(line) in stuck.hung]
                for pid in doomed:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    current.pop(pid, None)
                lost |= {entry, *stuck.hung}
                # Tritonserver 2.51 never releases the requests a dead stub had: the model's old
                # version stays loaded beside the new one and holds shutdown until the exit timeout.
                self.pinned |= {entry, *(set(stuck.job.stages) & lost)}
            supervisor.forget_dead_jobs(self.run_dir, set(current))
            self._retire(current)
            lost.discard("")
            if not lost:
                continue
            log(f"reloading {', '.join(sorted(lost))}: a stub process of each is gone")
            if self.reload(sorted(lost), stopping, log):
                log("reloaded")
                continue
            if stopping.is_set():
                break
            if self.process.poll() is not None:
                continue  # it died while reloading: the next tick says so and restarts it
            log("reloading failed")
            if not self._restart(stopping, log):
                return 1 if stub_processes(self.repository) else 0
            expected = self.expected_instances()
        if self.pinned:
            models = ", ".join(sorted(self.pinned))
            log(f"{models} had requests in a process that died: tritonserver waits for them until its exit timeout")
        return self.stop()

    def _admin(self, path: str, timeout: float = 10.0) -> bytes:
        """A call to the restricted HTTP API, with this server's key (only `serve` has it)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.ports.http}{path}", data=b"{}", method="POST", headers={ADMIN_HEADER: self.key}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:  # loopback only
            return response.read()

    def expected_instances(self) -> dict[str, int]:
        """Stub processes per loaded model, from Triton's own view of their configs; a model whose
        config cannot be read counts the stubs it has now."""
        live = supervisor.per_model(self.stubs(), self.repository)
        expected = {}
        for model in self.models or live:
            try:
                url = f"http://127.0.0.1:{self.ports.http}/v2/models/{model}/config"
                with urllib.request.urlopen(url, timeout=5) as response:  # loopback only
                    expected[model] = supervisor.instances(json.loads(response.read()))
            except (OSError, ValueError):
                expected[model] = live[model]
        return expected

    def reload(self, models: list[str], stopping: threading.Event, log=print) -> bool:
        """Unload and load `models` through the restricted API; False when one fails to load (or
        `stopping` was set, or tritonserver died, meanwhile). The loads run together, in threads: a signal while a
        full-size model loads (minutes) is answered at once."""
        before = {pid: line for pid, line in self.stubs().items() if self._model_of(line) in models}
        try:
            for model in models:
                self._admin(f"/v2/repository/models/{model}/unload")
        except OSError as exc:
            log(f"unloading failed: {exc}")
            return False
        pool = concurrent.futures.ThreadPoolExecutor(len(models), thread_name_prefix="reload")
        path = "/v2/repository/models/{}/load"
        loads = {model: pool.submit(self._admin, path.format(model), START_TIMEOUT_S) for model in models}
        pool.shutdown(wait=False)
        while not all(load.done() for load in loads.values()):
            # A tritonserver that died meanwhile never answers: its stubs, orphaned, still hold the
            # connection it accepted (they inherit its sockets), so the call would wait out its timeout.
            if stopping.wait(0.2) or self.process.poll() is not None:
                return False
        failed = {model: load.exception() for model, load in loads.items() if load.exception()}
        for model, exc in failed.items():
            log(f"{model}: loading failed: {exc}")
        current = self.stubs()
        reap({pid: line for pid, line in self.known_stubs.items() if pid not in current}, self.process.pid)
        self.known_stubs = current
        # Still alive: the other instances of a replaced version that tritonserver keeps loaded
        # (it never unloads one that had requests in a dead stub), with the memory they hold.
        self.retired |= {pid: line for pid, line in before.items() if pid in current}
        return not failed

    def _model_of(self, line: str) -> str:
        return supervisor.model_of(line, self.repository)

    def _retire(self, current: dict[int, str]) -> None:
        """End the stubs of replaced versions once no running job may be in them (they get no
        new requests); their shared-memory regions go with them."""
        busy = supervisor.busy(self.run_dir)
        for pid, line in list(self.retired.items()):
            if pid not in current:
                reap({pid: line}, self.process.pid)
                del self.retired[pid]
            elif pid not in busy.pids and self._model_of(line) not in busy.stages:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _restart(self, stopping: threading.Event, log) -> bool:
        """Restart from the supervisor; False when asked to stop meanwhile: what was loading was
        stopped on the way, which is the stop that was asked for."""
        log("restarting tritonserver: not ready until every model is loaded again")
        if not self.restart(stopping, log):
            self.stop()
            return False
        log("ready again")
        return True

    def restart(self, stopping: threading.Event, log=print, attempts: int = RESTART_ATTEMPTS) -> bool:
        """Stop and start again; False when `stopping` was set meanwhile (a signal while loading
        goes straight to tritonserver, which then exits: that is no failure to retry). A start can
        fail (a stub killed while loading fails its model, and tritonserver exits): try again; past
        `attempts` raise, so `serve` exits non-zero and the orchestrator restarts the container
        instead of keeping a process that serves nothing."""
        for attempt in range(1, attempts + 1):
            self.stop(drain_s=0)
            if stopping.is_set():
                return False
            try:
                self.start(stopping=stopping)
                return True
            except (OSError, RuntimeError, TimeoutError) as exc:
                if stopping.is_set():
                    return False
                log(f"restart {attempt} of {attempts} failed: {exc}")
        raise RuntimeError(f"tritonserver did not come back after {attempts} restarts; log: {self.log_path}")

    def close(self) -> int | None:
        """Stop, and remove this server's run folder."""
        try:
            return self.stop()
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.close()


def gpu_plan(checkpoint: Path, limits: Limits | None, log=print, parallel: Parallel | None = None) -> frozenset[str]:
    """On a GPU machine: the checkpoint's memory plan for the GPUs here (wan_triton/plan.py), logged; the
    models it puts on the CPU. Weights that cannot fit stop the start, with the plan's numbers."""
    import torch

    from wan_triton.plan import PlanError, make_plan

    gpus = torch.cuda.device_count()
    memory = min(torch.cuda.get_device_properties(i).total_memory for i in range(gpus))
    plan = make_plan(checkpoint, gpus, memory, limits, parallel)
    if not plan.fits:
        raise PlanError(plan.table())
    log(plan.table())
    return plan.cpu_models()


def prepare(
    repository: str | Path,
    checkpoint: str | Path | None,
    log=print,
    limits: Limits | None = None,
    denoiser_batch: int = 1,
    verify: bool = False,
    deadline_given: bool = True,
    parallel: Parallel | None = None,
    acceleration: Acceleration | None = None,
    allow_list: AllowList | None = None,
) -> Path:
    """Make `repository` servable for `checkpoint`: export what is stale, configs for this machine
    (`limits` written into the entries' configs; `denoiser_batch` requests batched at most). `verify`:
    hash every file again rather than trust unchanged fingerprints (export/manifest.py). Unless
    `deadline_given`, the limits' deadline follows the checkpoint's size (plan.default_deadline_s).
    `parallel` (serve --parallel) is checked against the transformer and the GPUs before anything starts.
    What admission needs (admission.Served: with `acceleration` and the adapters' `allow_list`) goes into
    the entries' configs.

    Without a checkpoint, the embedded default: the small one trained on captioned shapes (`train-tiny`),
    committed with the package.
    """
    import torch

    from wan_triton.admission import Served
    from wan_triton.contract import Family
    from wan_triton.export import export
    from wan_triton.plan import default_deadline_s
    from wan_triton.repository import ONNX_FILES
    from wan_triton.serving.configs import write
    from wan_triton.serving.models import served_models

    checkpoint = served_checkpoint(checkpoint)
    family = Family.from_checkpoint(checkpoint)  # before anything else: a checkpoint we cannot serve stops here
    limits = limits or Limits()
    if not deadline_given:
        limits = dataclasses.replace(limits, deadline_s=default_deadline_s(checkpoint))
        log(f"job deadline {limits.deadline_s:.0f} s for this checkpoint (deadline_s in --limits to choose)")
    gpu = torch.cuda.is_available()
    parallel = parallel or Parallel()
    denoiser_gpus: tuple[int, ...] = ()
    if parallel.world > 1:
        transformer = json.loads((checkpoint / "transformer" / "config.json").read_text())
        devices = torch.cuda.device_count() if gpu else None
        parallel.check(types.SimpleNamespace(**transformer), "cuda" if gpu else "cpu", devices)
        if gpu:  # one denoiser instance per set of `world` GPUs, on the set's first
            denoiser_gpus = tuple(range(0, devices - parallel.world + 1, parallel.world))
        log(f"parallel denoiser: {parallel} ({parallel.world} ranks{f', GPUs {denoiser_gpus}' if gpu else ''})")
    on_cpu = gpu_plan(checkpoint, limits, log, parallel) if gpu else frozenset()
    served = served_models(family)
    export(checkpoint, repository, parts=[name for name in ONNX_FILES if name in served], log=log, verify=verify)
    write(
        repository,
        gpu=gpu,
        limits=limits,
        denoiser_batch=denoiser_batch,
        on_cpu=on_cpu,
        denoiser_gpus=denoiser_gpus,
        served=Served.of_checkpoint(checkpoint, limits, parallel, acceleration, allow_list),
    )
    return checkpoint
