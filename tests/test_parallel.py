"""serve --parallel: one generation over several ranks (wan_triton/parallel.py, serving/ranks.py).

On this CPU the ranks are gloo processes. Ulysses splits each step's tokens and gathers them back
in the same order, so its latents equal one rank's exactly; cfg=2 runs each guidance branch as a
batch of one where one rank runs both as a batch of two, so its latents differ by float rounding
(~2e-6 here), which the served uint8 frames do not show.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp
from conftest import LIMITS, LONG, LORA_SCALES, SMALL, serve, stop
from test_tasks import pixels
from test_tasks_served import png

from wan_triton.client import Client, ClientError
from wan_triton.contract import WAN21, RequestError
from wan_triton.parallel import Parallel, ParallelError
from wan_triton.serving.ranks import Core
from wan_triton.serving.server import free_port, stub_processes
from wan_triton.stage_io import Controls, DenoiseJob

HEADS_2 = types.SimpleNamespace(num_attention_heads=2)


def test_degrees_parse_and_bad_ones_name_the_value():
    assert Parallel.parse("ulysses=2,cfg=2") == Parallel(ulysses=2, cfg=2)
    assert Parallel.parse("ulysses=2,cfg=2").world == 4 and Parallel.parse(None).world == 1
    assert str(Parallel.parse(" ring=2 , ulysses=2")) == "ulysses=2,ring=2"
    for text, words in {
        "tensor=2": "unknown degree 'tensor'",
        "ulysses=two": "ulysses='two' is not a whole number",
        "ulysses=0": "ulysses=0; 1 or more allowed",
        "cfg=3": "cfg=3; 1 or 2 allowed",
        "ulysses=2,ulysses=2": "ulysses given twice",
        "ulysses=8,cfg=2": "16 ranks; at most 8",
    }.items():
        with pytest.raises(ParallelError, match=words):
            Parallel.parse(text)


def test_degrees_are_checked_against_the_heads_and_the_devices():
    Parallel(ulysses=2).check(HEADS_2, "cpu")
    with pytest.raises(ParallelError, match="ulysses=3 does not divide the transformer's 2 attention heads"):
        Parallel(ulysses=3).check(HEADS_2, "cpu")
    with pytest.raises(ParallelError, match="ring=2 needs a GPU attention backend"):
        Parallel(ring=2).check(HEADS_2, "cpu")
    with pytest.raises(ParallelError, match="needs 4 GPUs, one per rank; 2 visible"):
        Parallel(ulysses=2, cfg=2).check(HEADS_2, "cuda", devices=2)


def test_a_request_the_ranks_cannot_split_is_refused_naming_the_input():
    ranks = Parallel(ulysses=2)
    ranks.check_request(32, 48, 9, "none", WAN21)  # 3 latent frames x 2 x 3 tokens: 18
    with pytest.raises(RequestError, match="height: 16x16 with num_frames 1 makes 1 latent tokens"):
        ranks.check_request(16, 16, 1, "none", WAN21)
    with pytest.raises(RequestError, match="cache_method: step caching is not supported with --parallel"):
        ranks.check_request(32, 48, 9, "first_block", WAN21)
    Parallel(cfg=2).check_request(16, 16, 1, "taylorseer", WAN21)  # guidance parallel splits no tokens


def _job(core: Core, guide: dict | None = None) -> DenoiseJob:
    rng = np.random.default_rng(0)
    width = core.denoiser.transformer.config.text_dim
    embeds, negative = (rng.standard_normal((1, 8, width), dtype=np.float32) for _ in range(2))
    controls = Controls(32, 48, 9, 3, 5.0, guidance_scale_2=3.0)
    return DenoiseJob(embeds, negative, controls, [42], guide or {})


def _rank(rank: int, spec: str, init: str, checkpoint: str, guide: dict, out: str) -> None:
    from wan_triton.parallel import Group

    core = Core(checkpoint, "cpu")
    group = Group.join(Parallel.parse(spec), rank, init, "cpu")
    group.apply(core.denoiser)
    steps = []

    def after_step(index: int, total: int, latents) -> None:
        assert not group.stop_flag(False)
        steps.append(index)

    latents = core.run(group.broadcast(_job(core, guide) if rank == 0 else None), after_step)
    assert steps == [0, 1, 2]
    if rank == 0:
        np.save(out, latents)
    group.close()


def parallel_latents(spec: str, checkpoint: Path, out: Path, guide: dict | None = None) -> np.ndarray:
    init = f"tcp://127.0.0.1:{free_port()}"
    mp.spawn(_rank, args=(spec, init, str(checkpoint), guide or {}, str(out)), nprocs=Parallel.parse(spec).world)
    return np.load(out)


@pytest.mark.parametrize("spec", ["ulysses=2", "cfg=2"])
def test_ranks_give_one_rank_s_latents(spec, tiny_checkpoint, tmp_path):
    alone = Core(tiny_checkpoint, "cpu").run(_job(Core(tiny_checkpoint, "cpu")))
    together = parallel_latents(spec, tiny_checkpoint, tmp_path / "latents.npy")
    difference = float(np.abs(together - alone).max())
    assert difference == 0.0 if spec.startswith("ulysses") else difference < 1e-5, difference


def test_ranks_run_two_experts_and_image_conditioning(two_experts, i2v_checkpoint, tmp_path):
    """Wan2.2's expert switch with ulysses and cfg at once (4 ranks), and Wan2.1 I2V's guide (the
    image's latents and CLIP tokens) broadcast to the ranks."""
    core = Core(two_experts, "cpu")
    alone = core.run(_job(core))
    assert float(np.abs(parallel_latents("ulysses=2,cfg=2", two_experts, tmp_path / "a.npy") - alone).max()) < 1e-5
    i2v = Core(i2v_checkpoint, "cpu")
    rng = np.random.default_rng(1)
    channels = i2v.denoiser.transformer.config.in_channels - i2v.denoiser.latent_channels - 4
    guide = {
        "image_latents": rng.standard_normal((1, channels, 3, 4, 6), dtype=np.float32),
        "image_embeds": rng.standard_normal((1, 4, i2v.denoiser.transformer.config.image_dim), dtype=np.float32),
    }
    alone = i2v.run(_job(i2v, guide))
    assert float(np.abs(parallel_latents("ulysses=2", i2v_checkpoint, tmp_path / "i.npy", guide) - alone).max()) == 0


def workers_of(repository: Path) -> set[int]:
    """The rank worker processes of the denoiser served from `repository`."""
    (denoiser,) = [pid for pid, line in stub_processes(repository).items() if "/denoiser/" in line]
    children = Path(f"/proc/{denoiser}/task/{denoiser}/children").read_text().split()
    return {int(pid) for pid in children if "wan_triton.serving.ranks" in Path(f"/proc/{pid}/cmdline").read_text()}


@pytest.fixture(scope="module")
def parallel_served(tiny_checkpoint, exported_repository, loras, tmp_path_factory):
    """The tiny checkpoint served with 4 ranks: ulysses=2 and cfg=2 at once. At the end, SIGTERM with
    a job in flight (a 1 s drain): the job ends within a step on every rank, then no stub and no rank
    worker is left."""
    root = tmp_path_factory.mktemp("parallel")
    options = ("--loras", str(loras), "--parallel", "ulysses=2,cfg=2", "--drain-s", "1")
    served = serve(tiny_checkpoint, exported_repository, root, LIMITS, options)
    yield served
    workers = workers_of(served.repository)
    started, ended = threading.Event(), {}

    def in_flight() -> None:
        try:
            Client(served.url, retries=0).generate_stream("long", on_progress=lambda _: started.set(), **LONG)
        except ClientError as exc:
            ended["error"] = exc

    job = threading.Thread(target=in_flight)
    job.start()
    assert started.wait(60)
    served.process.send_signal(signal.SIGTERM)
    job.join(60)
    code = served.process.wait(120)
    log = (root / "serve.log").read_text()
    # Exit 1 exactly when serve said why: a request was in the rank 0 that ended (test_faults.py).
    assert code == (1 if "had requests in a process that died" in log else 0), log[-3000:]
    assert ended["error"].status == "UNAVAILABLE", ended["error"]
    assert not stub_processes(served.repository)
    assert not {pid for pid in workers if Path(f"/proc/{pid}").exists()}, "every rank worker ended"


def test_parallel_frames_equal_one_rank_s(parallel_served, served):
    """The same requests, plain and with adapters, on 4 ranks and on the one-rank server: the
    same uint8 frames."""
    assert len(workers_of(parallel_served.repository)) == 3
    names, scales = list(LORA_SCALES), list(LORA_SCALES.values())
    for options in ({}, {"lora_names": names, "lora_scales": scales}):
        ours = Client(parallel_served.url).generate("a red cat", frames=True, seed=42, **options, **SMALL).frames
        theirs = Client(served.url).generate("a red cat", frames=True, seed=42, **options, **SMALL).frames
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_parallel_image_to_video_with_two_experts_equals_one_rank_s(
    i2v_a14b, exported_repository, served_i2v_a14b, tmp_path
):
    """Wan2.2 I2V A14B on two Ulysses ranks: the image's latents reach every rank, both experts run
    split, and the frames equal the one-rank server's bit for bit (the all-to-alls only move data)."""
    served = serve(i2v_a14b, exported_repository, tmp_path, None, ("--parallel", "ulysses=2"))
    workers = workers_of(served.repository)
    try:
        assert len(workers) == 1
        image = png(pixels((32, 48, 3), 2))
        options = {"image": image, "seed": 42, "guidance_scale_2": 3.0, **SMALL}
        ours = Client(served.url).generate("a red cat", frames=True, **options).frames
        theirs = Client(served_i2v_a14b.url).generate("a red cat", frames=True, **options).frames
        assert np.array_equal(ours, theirs)
    finally:
        stop(served)
    assert not {pid for pid in workers if Path(f"/proc/{pid}").exists()}, "the rank worker ended"


def test_parallel_streams_cancels_and_refuses(parallel_served):
    client = Client(parallel_served.url, retries=0)
    steps = []
    client.generate_stream("a cat", on_progress=lambda p: steps.append(p.step), **SMALL)
    assert steps == [1, 2, 3, 4]
    for options, name in (({"height": 16, "width": 16, "num_frames": 1}, "height"), ({"cache_threshold": 0.1}, None)):
        with pytest.raises(ClientError) as refused:
            client.generate("a cat", **{**SMALL, **options})
        assert refused.value.status == "INVALID_ARGUMENT"
        assert str(refused.value).startswith(f"{name or 'cache_method'}: "), refused.value
    # A client that gives up 1 s into a long job: every rank stops within a step, so the next job
    # neither waits for the long one's 100 steps nor finds the ranks out of step.
    with pytest.raises(ClientError) as gave_up:
        Client(parallel_served.url, timeout_s=1.0).generate("long", **LONG)
    assert gave_up.value.status == "DEADLINE_EXCEEDED"
    started = time.monotonic()
    assert client.generate("a cat", **SMALL).video
    assert time.monotonic() - started < 20


def test_a_rank_killed_mid_job_fails_it_naming_the_rank_and_service_returns(parallel_served):
    (victim, *_) = sorted(workers_of(parallel_served.repository))
    killed = {}

    def kill_at_two(progress) -> None:
        if progress.step == 2:
            os.kill(victim, signal.SIGKILL)
            killed["at"] = time.monotonic()

    with pytest.raises(ClientError) as failed:
        Client(parallel_served.url, retries=0).generate_stream("long", on_progress=kill_at_two, **LONG)
    assert failed.value.status == "INTERNAL" and "rank " in str(failed.value) and "exited with -9" in str(failed.value)
    assert time.monotonic() - killed["at"] < 10
    assert Client(parallel_served.url, retries=30).generate("a cat", **SMALL).video
    assert victim not in workers_of(parallel_served.repository) and len(workers_of(parallel_served.repository)) == 3


def test_a_degree_that_does_not_divide_the_heads_is_refused_at_start(tiny_checkpoint, tmp_path):
    command = [sys.executable, "-m", "wan_triton.cli", "serve", "--checkpoint", str(tiny_checkpoint)]
    command += ["--repository", str(tmp_path / "repository"), "--parallel", "ulysses=3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "ulysses=3 does not divide the transformer's 2 attention heads" in done.stderr
    assert not (tmp_path / "repository").exists(), "refused before anything was written"
