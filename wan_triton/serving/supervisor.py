"""What `serve`'s supervisor reads each second (TritonServer.supervise): which models lost a stub
process, and which jobs are stuck.

Tritonserver 2.51 neither restarts a Python-backend stub that died (OOM killer, `kill -9`) nor
reports it: its requests fail ("Stub process ... is not healthy") while every health endpoint says
ready, and an entry waiting in a BLS call on it never gets an answer. Each model's live stubs are
therefore counted against the instances Triton runs for it, and each running job's marker
(cancel.Running) says which stub process runs it, until when it may, and which stages it waits on.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from wan_triton.serving import cancel

# Past a job's deadline the denoiser stops it within a step and the other stages are bounded by
# the size limits; a job still running this long after is stuck in a call that does not return
# (a hung stage), and only ending the processes frees those instances.
WATCHDOG_GRACE_S = 60.0


def model_of(line: str, repository: Path) -> str:
    """The model a stub serves, from its command line: `<stub> <repository>/<model>/<version>/model.py ...`."""
    words = line.split()
    try:
        return Path(words[1]).relative_to(repository).parts[0]
    except (IndexError, ValueError):
        return ""


def per_model(stubs: dict[int, str], repository: Path) -> Counter[str]:
    """Live stub processes per model."""
    return Counter(model_of(line, repository) for line in stubs.values())


def instances(config: dict) -> int:
    """How many stub processes Triton runs for a model, from its config as `/v2/models/<name>/config`
    returns it (Triton fills a GPU group's `gpus` with the devices it uses)."""
    total = 0
    for group in config.get("instance_group", []):
        count = int(group.get("count", 1))
        gpus = group.get("gpus") or []
        total += count * max(1, len(gpus)) if group.get("kind") == "KIND_GPU" else count
    return total


def lost_models(expected: dict[str, int], live: Counter[str]) -> set[str]:
    """The models with fewer live stubs than Triton runs for them: one died, also one that died
    right after loading, before anyone looked."""
    return {model for model, count in expected.items() if live[model] < count}


@dataclass(frozen=True)
class Stuck:
    job: cancel.Running
    why: str
    hung: tuple[str, ...] = ()  # the stages that stopped answering it: they are ended too


def stuck_jobs(
    run_dir: Path, lost: set[str], now: float | None = None, grace_s: float = WATCHDOG_GRACE_S
) -> Iterator[Stuck]:
    """Running jobs that cannot end by themselves: waiting on a stage whose process died (the BLS
    call never returns), or running past their deadline by `grace_s` (a hung stage)."""
    now = time.time() if now is None else now
    for path in cancel.running_jobs(run_dir):
        job = cancel.Running.read(path)
        if job is None:
            continue
        waiting = sorted(set(job.stages) & lost)
        if waiting:
            yield Stuck(job, f"waiting on {', '.join(waiting)}, whose process died")
        elif now > job.until + grace_s:
            yield Stuck(job, f"{now - job.until:.0f} s past its deadline", tuple(job.stages))


@dataclass(frozen=True)
class Busy:
    pids: set[int]  # entry processes running a job
    stages: set[str]  # stages a running job waits on


def busy(run_dir: Path) -> Busy:
    jobs = [job for job in map(cancel.Running.read, cancel.running_jobs(run_dir)) if job is not None]
    return Busy({job.pid for job in jobs}, {stage for job in jobs for stage in job.stages})


def forget_dead_jobs(run_dir: Path, live: set[int]) -> None:
    """Markers of entries whose process is gone: they would make every later drain wait in vain."""
    for path in cancel.running_jobs(run_dir):
        job = cancel.Running.read(path)
        if job is not None and job.pid not in live:
            path.unlink(missing_ok=True)
