"""The denoiser's ranks in parallel mode (`serve --parallel`, wan_triton/parallel.py).

The denoiser's Triton instance is rank 0. It starts the other ranks as worker processes of its own
(`python -m wan_triton.serving.ranks`), one device each on a GPU machine (the instance's device and
the next ones; gloo ranks on a CPU), which die with it. For every batch rank 0 broadcasts the job
(embeddings, controls, seeds, conditioning, adapters; each rank draws the same noise from the
seeds), all ranks run the same loop in lockstep, and after each step rank 0 says whether the job
goes on (a cancel or deadline stops every rank after the same step). Rank 0 streams progress and
returns the latents: diffusers gathers the sequence back on every rank.

A rank that fails or dies breaks the group: its job fails naming the rank, and rank 0 then ends
its own process, so `serve`'s supervisor reloads the denoiser with a new group (R15).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from wan_triton.parallel import Group, Parallel
from wan_triton.serving.server import die_with_parent, free_port
from wan_triton.serving.settings import ServeSettings
from wan_triton.stage_io import DenoiseJob

BROKEN_EXIT = 3  # a rank 0 whose group broke ends with this (its supervisor reloads it)


class Core:
    """The denoiser as each rank holds it: the transformer(s), the geometry and the adapters."""

    def __init__(self, checkpoint: str | Path, device: str) -> None:
        from wan_triton import lora
        from wan_triton.contract import Geometry
        from wan_triton.pipeline import step_cache
        from wan_triton.pipeline.denoise import Denoiser, default_dtype
        from wan_triton.pipeline.layout import open_checkpoint

        opened = open_checkpoint(checkpoint)
        self.checkpoint = opened
        self.device = device
        settings = ServeSettings.current()  # what serve decided (serving/settings.py)
        self.denoiser = Denoiser.from_checkpoint(opened, default_dtype(device), device, dict(settings.gguf))
        self.geometry = Geometry.from_checkpoint(opened.root)
        self.mag_ratios = step_cache.load_mag_ratios(opened.root)
        self.acceleration = settings.acceleration
        self.acceleration.apply(self.denoiser)
        self.adapters = None
        if settings.loras:  # adapters per request, up to the cache size resident at once
            allow = settings.allow_list()
            self.adapters = lora.Adapters(self.denoiser.experts(), allow, settings.lora_cache)
            if settings.fuse_loras:  # a dedicated deployment: merged into the weights once
                self.adapters.fuse(*lora.parse_adapters(settings.fuse_loras))

    def check(self, job: DenoiseJob) -> None:
        """What would fail the same way on every rank, refused on rank 0 before any starts."""
        if not job.lora_names:
            return
        if self.adapters is None:
            raise RuntimeError("this server has no adapters (serve --loras)")
        for name in job.lora_names:
            self.adapters.allow.resolve(name, self.adapters.experts)

    def run(self, job: DenoiseJob, callback=None) -> np.ndarray:
        """The job's latents, float32 on the host."""
        from wan_triton.pipeline.denoise import run_job

        names, scales = job.lora_names, job.lora_scales
        with self.adapters.use(names, scales) if names else contextlib.nullcontext():
            return run_job(self.denoiser, job, self.geometry, self.device, self.mag_ratios, callback)


class Stopped(Exception):
    """A worker's loop, stopped after the step rank 0 said."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # flushed: os._exit may follow


def _python() -> str:
    """This environment's interpreter: a stub's `sys.executable` may be the stub itself."""
    candidate = Path(sys.prefix) / "bin" / "python3"
    return str(candidate) if candidate.exists() else sys.executable


def rank_device(device: str, rank: int) -> str:
    """Rank r's device: the instance's own GPU for rank 0, the next ones after it; the CPU on a CPU."""
    if not device.startswith("cuda"):
        return "cpu"
    first = int(device.partition(":")[2] or 0)
    return f"cuda:{first + rank}"


class Ranks:
    """Rank 0's side: the workers it started, the group, and the job it runs with them."""

    def __init__(self, spec: Parallel, core: Core, checkpoint: str | Path, log=None) -> None:
        self.spec, self.core, self.log = spec, core, log or _say
        init = f"tcp://127.0.0.1:{free_port()}"
        device = core.device
        self.workers: dict[int, subprocess.Popen] = {}
        for rank in range(1, spec.world):
            command = [_python(), "-m", "wan_triton.serving.ranks", "--rank", str(rank), "--init", init]
            command += ["--checkpoint", str(checkpoint), "--device", rank_device(device, rank), "--parallel", str(spec)]
            # The rest of what serve decided, each worker reads from the run folder as rank 0 did.
            self.workers[rank] = subprocess.Popen(command, preexec_fn=die_with_parent)
        self.group = self._join(init, "cuda" if device.startswith("cuda") else "cpu")
        self.group.apply(core.denoiser)
        self.busy = threading.Lock()
        self.broken: str | None = None
        self.closing = False
        threading.Thread(target=self._watch, name="ranks-watch", daemon=True).start()

    def _join(self, init: str, device_type: str) -> Group:
        """Join the group, watching the workers meanwhile: one that dies while it loads would
        otherwise hold rank 0 here until the collective timeout."""
        joined: dict = {}

        def join() -> None:
            try:
                joined["group"] = Group.join(self.spec, 0, init, device_type)
            except Exception as exc:
                joined["error"] = exc

        thread = threading.Thread(target=join, name="ranks-join", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(0.5)
            dead = self.dead()
            if dead and thread.is_alive():
                for process in self.workers.values():
                    process.kill()
                raise RuntimeError(f"the denoiser's ranks did not start: {dead} (its error is in the log above)")
        if "error" in joined:
            raise joined["error"]
        return joined["group"]

    def _watch(self) -> None:
        """A worker that exits while idle breaks the group too: end rank 0 at once (readiness goes
        down, the supervisor reloads the denoiser); during a job, the job reports it first."""
        while not self.closing:
            dead = self.dead()
            if dead and not self.closing:
                self.broken = dead
                if self.busy.acquire(blocking=False):
                    self.log(f"denoiser: {dead}; ending this instance so that it is reloaded")
                    os._exit(BROKEN_EXIT)
                return
            time.sleep(0.5)

    def dead(self) -> str | None:
        for rank, process in self.workers.items():
            if process.poll() is not None:
                return f"rank {rank} of {self.spec.world} exited with {process.returncode}"
        return None

    def run(self, job: DenoiseJob, callback=None) -> np.ndarray:
        """`job` on every rank; `callback` (rank 0's progress and stop reasons) after each step."""
        if self.broken:  # a retry finds the next group (the client reads "is being reloaded" as UNAVAILABLE)
            raise RuntimeError(f"the denoiser's rank group is broken ({self.broken}); it is being reloaded")

        def step(index: int, total: int, latents) -> None:
            try:
                if callback is not None:
                    callback(index, total, latents)
            except BaseException:
                self.group.stop_flag(True)
                raise
            self.group.stop_flag(False)

        with self.busy:
            try:
                self.group.broadcast(job)
                return self.core.run(job, step)
            except Exception as exc:
                time.sleep(0.5)  # a rank that failed is exiting: name it
                dead = self.dead()
                if dead is None and _is_collective_error(exc):
                    dead = "a rank stopped answering"
                if dead is None:
                    raise  # this rank's own error, or a stop: the group is still in step
                self.broken = dead  # the stage ends this process once the job's final is sent (end_if_broken)
                raise RuntimeError(f"{dead}: {type(exc).__name__}: {exc}") from exc

    def end_if_broken(self) -> None:
        """After a batch's final responses went out: a broken group ends this process, so that the
        supervisor reloads the denoiser with a new one (nothing is left in flight in it)."""
        if self.broken:
            self.log(f"denoiser: {self.broken}; ending this instance so that it is reloaded")
            time.sleep(0.2)  # the responses just sent reach tritonserver
            os._exit(BROKEN_EXIT)

    def close(self, timeout: float = 10.0) -> None:
        """Workers end (a None job), or are killed past `timeout`."""
        self.closing = True
        if not self.broken:
            with contextlib.suppress(Exception):
                self.group.broadcast(None)
        deadline = time.monotonic() + timeout
        for process in self.workers.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
            if process.poll() is None:
                process.kill()
                process.wait()
        self.group.close()


def _is_collective_error(exc: Exception) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(word in text for word in ("gloo", "nccl", "connection", "timed out", "distbackend"))


def work(rank: int, init: str, checkpoint: str, device: str, spec: Parallel) -> int:
    """A worker rank: load, join, then run rank 0's jobs until it says stop (a None job)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(device)
    core = Core(checkpoint, device)
    group = Group.join(spec, rank, init, "cuda" if device.startswith("cuda") else "cpu")
    group.apply(core.denoiser)

    def step(index: int, total: int, latents) -> None:
        if group.stop_flag(False):
            raise Stopped

    while True:
        job = group.broadcast(None)
        if job is None:
            group.close()
            return 0
        # Any other exception leaves this rank out of step with the group: it propagates, and main()
        # ends the process, so that the others' collectives fail at once instead of at their timeout.
        with contextlib.suppress(Stopped):
            core.run(job, step)


def main() -> None:
    parser = argparse.ArgumentParser(description="one worker rank of the parallel denoiser")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--init", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--parallel", required=True, help="the degrees, as rank 0 runs them")
    args = parser.parse_args()
    try:
        code = work(args.rank, args.init, args.checkpoint, args.device, Parallel.parse(args.parallel))
    except BaseException as exc:
        print(f"denoiser rank {args.rank}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        os._exit(1)
    sys.exit(code)


if __name__ == "__main__":
    main()
