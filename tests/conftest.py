"""Shared fixtures: one tiny checkpoint and one export per test session (they take minutes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from wan_triton.checkpoints import build_checkpoint
from wan_triton.contract import validate

PROJECT = Path(__file__).resolve().parent.parent
# Options small enough for the tiny checkpoint to serve a video in well under a second.
SMALL = {"height": 32, "width": 48, "num_frames": 9, "num_inference_steps": 4, "negative_prompt": "blurry"}
# Long enough that finishing it would take seconds more than a cancel allows (measured here:
# 80-170 ms a step on 2 cores).
LONG = {"height": 256, "width": 256, "num_frames": 33, "num_inference_steps": 100}
# The served fixture's limits (`serve --limits`): small enough for tests to reach each one.
# 300 MB decoded: 9 frames of 4096^2 (453 MB) are refused from the header, 5 (252 MB) decode.
LIMITS = {
    "max_output_bytes": 30_000_000,
    "deadline_s": 10.0,
    "max_queue_size": 2,
    "max_media_decoded_bytes": 300_000_000,
}
LORA_SCALES = {"a": 0.7, "b": 0.4}  # the `loras` fixture's real adapters, at the scales tests use


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-t2v", seed=0)


@pytest.fixture(scope="session")
def i2v_checkpoint(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-i2v", "i2v-2.1", seed=0)


@pytest.fixture(scope="session")
def flf2v_checkpoint(tmp_path_factory):
    """Wan2.1 FLF2V's layout: Wan2.1 I2V whose CLIP tokens are a first and a last frame's."""
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-flf2v", "flf2v-2.1", seed=0)


@pytest.fixture(scope="session")
def vace_checkpoint(tmp_path_factory):
    """Wan2.1 VACE's layout: the T2V parts with a VACE transformer (the same seeds: shared exports)."""
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-vace", "vace-2.1", seed=0)


@pytest.fixture(scope="session")
def animate_checkpoint(tmp_path_factory):
    """Wan2.2 Animate's layout: CLIP tokens, pose and face conditioning, a small motion encoder."""
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-animate", "animate-2.2", seed=0)


@pytest.fixture(scope="session")
def ti2v_checkpoint(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-ti2v", "ti2v-2.2", seed=0)


@pytest.fixture(scope="session")
def two_experts(tmp_path_factory) -> Path:
    """Wan2.2 T2V A14B's layout: a second transformer for the low-noise steps."""
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-t2v-a14b", "t2v-a14b", seed=0)


@pytest.fixture(scope="session")
def i2v_a14b(tmp_path_factory) -> Path:
    """Wan2.2 I2V A14B's layout: two experts, the image's latents on the input channels, no CLIP."""
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-i2v-a14b", "i2v-a14b", seed=0)


@pytest.fixture(scope="session")
def loras(tiny_checkpoint, tmp_path_factory) -> Path:
    """A LoRA allow-list for the tiny checkpoint: two real adapters, and every way an entry can be wrong."""
    from wan_triton.checkpoints import build_lora

    base = tmp_path_factory.mktemp("loras")
    root, outside = base / "root", base / "outside"
    for seed, name in enumerate(LORA_SCALES, start=1):
        build_lora(tiny_checkpoint, root, seed=seed).rename(root / f"{name}.safetensors")
    outside.mkdir()
    (outside / "evil.safetensors").write_bytes((root / "a.safetensors").read_bytes())
    os.symlink(outside / "evil.safetensors", root / "link.safetensors")
    for name in ("model.bin", "model.pth"):
        (root / name).write_bytes(b"\x80\x04pickle")
    adapters = {name: f"{name}.safetensors" for name in LORA_SCALES}
    adapters |= {
        "parent": "../outside/evil.safetensors",
        "absolute": str(outside / "evil.safetensors"),
        "symlink": "link.safetensors",
        "pickle": "model.bin",
        "torch": "model.pth",
        "gone": "missing.safetensors",
        "low_noise": {"transformer_2": "a.safetensors"},  # for Wan2.2 A14B's second expert
    }
    (root / "loras.json").write_text(json.dumps({"adapters": adapters}))
    return root / "loras.json"


@pytest.fixture(scope="session")
def expert_loras(two_experts, tmp_path_factory) -> Path:
    """A LoRA allow-list for the Wan2.2 A14B tiny checkpoint, as step-distillation adapters ship:
    a high-noise and a low-noise file as one pair, each file alone, and one file on both experts."""
    from wan_triton.checkpoints import build_lora

    root = tmp_path_factory.mktemp("expert-loras")
    for seed, name in enumerate(("high", "low"), start=3):
        build_lora(two_experts, root, seed=seed).rename(root / f"{name}.safetensors")
    adapters = {
        "pair": {"transformer": "high.safetensors", "transformer_2": "low.safetensors"},
        "high": "high.safetensors",
        "low": {"transformer_2": "low.safetensors"},
        "both": {"transformer": "high.safetensors", "transformer_2": "high.safetensors"},
    }
    (root / "loras.json").write_text(json.dumps({"adapters": adapters}))
    return root / "loras.json"


@pytest.fixture(scope="session")
def exported_repository(tiny_checkpoint, tmp_path_factory) -> Path:
    from wan_triton.export import export

    repository = tmp_path_factory.mktemp("repo") / "model_repository"
    export(tiny_checkpoint, repository)
    return repository


def ffprobe(video: bytes, folder: Path) -> dict:
    """Debian's ffprobe on MP4 bytes: the first stream, frames counted by decoding."""
    path = folder / "probe.mp4"
    path.write_bytes(video)
    command = ["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-of", "json", str(path)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)["streams"][0]


def small_request(task: str = "t2v", **overrides):
    """A request small enough for the tiny checkpoint to run in well under a second."""
    values = {
        "prompt": "a red cat walking in the snow",
        "negative_prompt": "blurry",
        "height": 32,
        "width": 48,
        "num_frames": 9,
        "num_inference_steps": 4,
        "guidance_scale": 5.0,
        "seed": 42,
    }
    return validate({**values, **overrides}, task=task)


@dataclass
class Served:
    url: str
    http: int
    metrics: int
    repository: Path
    checkpoint: Path | None
    process: subprocess.Popen
    api_port: int | None = None  # serve --api-port


def serve(
    checkpoint: Path | None,
    exported: Path | None,
    root: Path,
    limits: dict | None = None,
    extra: tuple[str, ...] = (),
    python: str = sys.executable,
) -> Served:
    """`wan-triton serve` (the real command) on free ports, ready. The repository is a copy of the
    checked-in one plus `exported` (serve finds those exports current and reuses them). `python`: the
    interpreter of the environment to serve from (its stubs run in that environment too). No `checkpoint`:
    serve's embedded default."""
    from wan_triton.client import Client, ClientError
    from wan_triton.serving.models import MODELS
    from wan_triton.serving.server import Ports

    repository = root / "model_repository"
    shutil.copytree(PROJECT / "model_repository", repository)
    for model in set(MODELS) & {p.name for p in exported.iterdir()} if exported else ():
        shutil.copytree(exported / model, repository / model, dirs_exist_ok=True)
    ports = Ports.free()
    log = root / "serve.log"
    command = [python, "-m", "wan_triton.cli", "serve", *(["--checkpoint", str(checkpoint)] if checkpoint else [])]
    command += ["--repository", str(repository), "--log", str(root / "triton.log")]
    command += ["--grpc-port", str(ports.grpc), "--http-port", str(ports.http), "--metrics-port", str(ports.metrics)]
    if limits is not None:
        (root / "limits.json").write_text(json.dumps(limits))
        command += ["--limits", str(root / "limits.json")]
    # Outside the checkout: `python -m` imports the installed package, not the working tree.
    process = subprocess.Popen([*command, *extra], stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=root)
    url = f"127.0.0.1:{ports.grpc}"
    client = Client(url)
    for _ in range(900):
        if process.poll() is not None:
            raise RuntimeError(f"wan-triton serve exited with {process.returncode}: {log.read_text()[-3000:]}")
        try:
            client.wait_ready(1)
            break
        except ClientError:
            continue
    else:
        process.kill()
        raise RuntimeError(f"server not ready in time: {log.read_text()[-3000:]}")
    return Served(url, ports.http, ports.metrics, repository, checkpoint, process)


def stop(served: Served) -> None:
    """SIGTERM: drained, every model unloaded, exit 0, no stub process left."""
    from wan_triton.serving.server import stub_processes

    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(120) == 0
    assert not stub_processes(served.repository)


@pytest.fixture(scope="session")
def served(tiny_checkpoint, exported_repository, loras, tmp_path_factory):
    """The tiny T2V checkpoint served (wan_t2v, wan_v2v and their stages): one server for the
    whole session, with the LIMITS and the `loras` allow-list."""
    from wan_triton.client import Client, ClientError
    from wan_triton.serving.server import free_port, stub_processes

    root = tmp_path_factory.mktemp("served")
    api = free_port()  # serve also runs the OpenAI Videos API (tests/test_api.py)
    extra = ("--loras", str(loras), "--lora-cache", "2", "--api-port", str(api), "--api-data-dir", str(root / "api"))
    served = serve(tiny_checkpoint, exported_repository, root, LIMITS, extra)
    served.api_port = api
    process, repository, url = served.process, served.repository, served.url
    log = root / "serve.log"
    yield served
    # R14, SIGTERM with a job in flight: the job finishes, a new one is refused at once, the
    # process exits cleanly, and no stub process or shared-memory region of it is left.
    regions = {word for line in stub_processes(repository).values() for word in line.split() if "shm_region" in word}
    assert regions, "each stub names its shared-memory region on its command line"
    started, finished = threading.Event(), {}

    def in_flight() -> None:
        # Seconds (80-170 ms a step, then the VAE): still in flight half a second after SIGTERM,
        # and inside the 10 s deadline (20 steps were not, on a machine running two servers).
        options = {**LONG, "num_inference_steps": 12}
        finished["job"] = Client(url).generate_stream("in flight", on_progress=lambda _: started.set(), **options)

    job = threading.Thread(target=in_flight)
    job.start()
    assert started.wait(120)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(ClientError) as refused:
        Client(url, retries=0).generate("too late", **SMALL)
    job.join(120)
    try:
        code = process.wait(20)
    except subprocess.TimeoutExpired:  # a model that does not unload: keep evidence for the report
        code = None
        dump_stubs(repository, root / "stuck-stubs.txt")
    code = process.wait(120) if code is None else code
    unloading = [line for line in (root / "triton.log").read_text().splitlines() if "unload" in line or "live" in line]
    evidence = "\n".join([log.read_text()[-2000:], *unloading[-8:], f"stub stacks: {root / 'stuck-stubs.txt'}"])
    # R14/R30, strict: every model unloads within Triton's exit timeout (docs/RELIABILITY.md: the
    # client that cancelled after a final pinned a streaming entry; ours never does now).
    assert code == 0, evidence
    assert finished["job"].video and refused.value.status == "UNAVAILABLE", refused.value
    assert not stub_processes(repository)
    assert not [name for name in regions if (Path("/dev/shm") / name).exists()]
    with pytest.raises(OSError):  # the API serve started went with it (URLError is an OSError)
        urllib.request.urlopen(f"http://127.0.0.1:{api}/health", timeout=5)


@pytest.fixture(scope="session")
def served_i2v_a14b(i2v_a14b, exported_repository, tmp_path_factory):
    """The Wan2.2 I2V A14B tiny checkpoint on one rank: test_wan22.py checks it against diffusers,
    test_parallel.py against the same checkpoint served on two ranks. Its text encoder and VAE are
    the tiny T2V checkpoint's (same seeds and sizes), so their exports are reused."""
    served = serve(i2v_a14b, exported_repository, tmp_path_factory.mktemp("served-i2v-a14b"))
    yield served
    stop(served)


def dump_stubs(repository: Path, out: Path) -> None:
    """Python stacks of the stubs still running (py-spy), for a shutdown that hangs."""
    from wan_triton.serving.server import stub_processes

    with out.open("w") as report:
        for pid, line in stub_processes(repository).items():
            report.write(f"== {pid} {line[:200]}\n")
            spy = shutil.which("py-spy", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
            if spy:
                dump = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True)
                report.write(dump.stdout + dump.stderr)
