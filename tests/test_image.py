"""The container images (docker/), checked without a Docker engine: the lock resolves for the base image's
Python and platform from wheels alone and to itself, it agrees with pyproject and the Dockerfile, the
entrypoint serves a read-only repository, and hadolint passes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
LOCK = ROOT / "constraints" / "image.txt"
# nvcr.io/nvidia/tritonserver:<release>-py3, from NVIDIA's release notes and compatibility matrix.
# Moving to another release means looking these up and adding it here.
NGC_RELEASES = {"25.10": {"python": "3.12", "cuda": "13.0", "platform": "manylinux_2_39_x86_64"}}
# The lock's deliberate departures from pyproject (docker/lock.sh says why).
REPLACED = {"onnxruntime": "onnxruntime-gpu"}
EXCLUDED = {"nvidia-pytriton"}
# What the models and the export import; the original image failures were numpy 2 under torch and
# missing peft, decord and sentencepiece.
REQUIRED = ("torch", "numpy", "diffusers", "transformers", "peft", "sentencepiece", "onnxruntime-gpu", "av", "librosa")
IMAGE_MARKERS = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "platform_machine": "x86_64",
    "platform_system": "Linux",
    "sys_platform": "linux",
    "os_name": "posix",
}
RESOLVE_BUDGET_S = 120  # measured ~30 s; a pip that downloads every wheel in full takes minutes


def lock_header(field: str) -> str:
    match = re.search(rf"^# {field}: (\S+)", LOCK.read_text(), re.MULTILINE)
    assert match, f"constraints/image.txt has no '# {field}:' header line"
    return match.group(1)


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            found[canonicalize_name(name)] = version
    return found


def dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, f"docker/Dockerfile has no ARG {name}=..."
    return match.group(1)


def dockerfile_instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"^\s*#.*\n", "", DOCKERFILE.read_text(), flags=re.MULTILINE)
    return [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def base_release() -> dict[str, str]:
    image = dockerfile_arg("TRITON_IMAGE")
    match = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d\d\.\d\d)-py3(@sha256:[0-9a-f]{64})?", image)
    assert match, f"base image {image!r} is not a pinned nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tag"
    assert match.group(1) in NGC_RELEASES, f"{image}: look up its Python and CUDA, add them to NGC_RELEASES"
    return NGC_RELEASES[match.group(1)]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """pip's report of installing the lock into the image: resolved, never downloaded in full."""
    path = tmp_path_factory.mktemp("lock") / "report.json"
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(ROOT / "docker" / "lock.sh"), "--report", str(path)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=3 * RESOLVE_BUDGET_S,
    )
    elapsed = time.monotonic() - started
    errors = [line for line in result.stderr.splitlines() if "is ignored: it is neither a file" not in line]
    assert result.returncode == 0, "\n".join(errors[-40:])
    assert elapsed < RESOLVE_BUDGET_S, f"resolving the lock took {elapsed:.0f} s: is pip downloading whole wheels?"
    return json.loads(path.read_text())


def test_the_lock_resolves_to_itself_from_image_wheels(report):
    resolved = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"] for item in report["install"]}
    locked = pins(LOCK)
    assert resolved.keys() - locked.keys() == set(), "pip added packages the lock lacks: rerun docker/lock.sh"
    assert {name: (locked[name], version) for name, version in resolved.items() if locked[name] != version} == {}
    assert resolved == locked

    glibc_minor = int(lock_header("platform").split("_")[2])
    for item in report["install"]:
        filename = item["download_info"]["url"].rsplit("/", 1)[1]
        assert filename.endswith(".whl"), f"{filename}: not a wheel"
        tags = parse_wheel_filename(filename)[3]
        assert any(_runs_in_image(tag, glibc_minor) for tag in tags), f"{filename}: no tag for CPython 3.12, x86_64"


def _runs_in_image(tag, glibc_minor: int) -> bool:
    interpreter_ok = tag.interpreter in ("cp312", "py3", "py312") or (
        tag.abi == "abi3" and re.fullmatch(r"cp3\d+", tag.interpreter) and int(tag.interpreter[3:]) <= 12
    )
    abi_ok = tag.abi in ("cp312", "abi3", "none")
    manylinux = re.fullmatch(r"manylinux_2_(\d+)_x86_64|manylinux(2014|2010|1)_x86_64", tag.platform)
    platform_ok = tag.platform == "any" or bool(
        manylinux and (manylinux.group(2) or int(manylinux.group(1)) <= glibc_minor)
    )
    return bool(interpreter_ok and abi_ok and platform_ok)


def test_torch_and_onnxruntime_use_the_base_image_cuda(report):
    metadata = {canonicalize_name(item["metadata"]["name"]): item["metadata"] for item in report["install"]}
    cuda = base_release()["cuda"]

    def requirement(package: str, prefix: str) -> Requirement:
        return Requirement(next(r for r in metadata[package]["requires_dist"] if r.startswith(prefix)))

    (toolkit,) = requirement("torch", "cuda-toolkit").specifier
    assert toolkit.operator == "==" and Version(toolkit.version).release[:2] == Version(cuda).release, toolkit
    runtime = requirement("onnxruntime-gpu", "nvidia-cuda-runtime")
    assert runtime.specifier.contains(f"{cuda}.0"), runtime
    assert lock_header("cuda") == cuda


def test_the_lock_has_what_the_models_import():
    locked = pins(LOCK)
    assert [name for name in REQUIRED if name not in locked] == []
    assert Version(locked["numpy"]) < Version("2"), "torch in the image is built for numpy 1.x here"
    assert "decord" in locked, "the image is x86_64, where decord has a wheel (py3-none-manylinux2010)"
    for name in (*REPLACED, *EXCLUDED):
        assert name not in locked, f"{name} must not be in the image (docker/lock.sh)"


def test_the_lock_covers_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    locked = pins(LOCK)
    for line in project["dependencies"] + extras["server"] + extras["export"] + extras["api"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name == "wan-triton" or (requirement.marker and not requirement.marker.evaluate(IMAGE_MARKERS)):
            continue
        if name in EXCLUDED:
            continue
        name = REPLACED.get(name, name)
        assert name in locked, f"pyproject needs {line!r}; the lock lacks {name}: rerun docker/lock.sh"
        assert requirement.specifier.contains(locked[name], prereleases=True), f"{name}=={locked[name]} vs {line!r}"


def test_the_lock_keeps_the_versions_ci_tests():
    dev, image = pins(ROOT / "constraints" / "dev.txt"), pins(LOCK)
    assert {name: (dev[name], image[name]) for name in dev.keys() & image.keys() if dev[name] != image[name]} == {}


def test_the_dockerfile_pins_the_base_image_the_lock_was_made_for():
    release = base_release()
    assert lock_header("image") == dockerfile_arg("TRITON_IMAGE")
    assert lock_header("python") == dockerfile_arg("LOCK_PYTHON") == release["python"]
    assert lock_header("platform") == release["platform"]
    stages: list[str] = []
    for instruction in dockerfile_instructions():
        if instruction.startswith("FROM "):
            words = instruction.split()
            assert words[1] in ("${TRITON_IMAGE}", "scratch", *stages), f"unpinned base: {instruction}"
            assert "latest" not in words[1]
            stages.append(words[-1])


def test_the_dockerfile_installs_the_lock_as_is():
    runs = [i for i in dockerfile_instructions() if i.startswith("RUN ") and "pip install" in i]
    lock_install = next(i for i in runs if "image.txt" in i)
    assert "--no-deps" in lock_install and "--only-binary=:all:" in lock_install
    # With its dependencies, installing the project would add onnxruntime (CPU) over onnxruntime-gpu.
    project_install = next(i for i in runs if "/tmp/wan-triton" in i)
    assert "--no-deps" in project_install and "pip check" in project_install


def test_the_entrypoint_serves_a_writable_folder_linking_the_image_repository(tmp_path):
    image_repository = tmp_path / "image"
    for model in ("text_encoder", "wan_t2v"):
        (image_repository / model / "1").mkdir(parents=True)
        (image_repository / model / "1" / "model.py").write_text("# model\n")
    (image_repository / "README.md").write_text("not a model\n")
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "wan-triton"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    served = tmp_path / "run" / "model_repository"
    (served / "stale").mkdir(parents=True)
    env = {
        **os.environ,
        "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}",
        "WAN_TRITON_IMAGE_REPOSITORY": str(image_repository),
        "WAN_TRITON_SERVED_REPOSITORY": str(served),
    }
    result = subprocess.run(
        ["sh", str(ROOT / "docker" / "entrypoint.sh"), "--checkpoint", "/checkpoint"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == ["doctor", f"serve --repository {served} --checkpoint /checkpoint"]
    assert sorted(p.name for p in served.iterdir()) == ["text_encoder", "wan_t2v"]
    for model in ("text_encoder", "wan_t2v"):
        link = served / model / "1"
        assert link.is_symlink() and link.resolve() == (image_repository / model / "1").resolve()
        assert (link / "model.py").is_file()
        assert not (served / model).is_symlink()  # serve writes config.pbtxt here


def test_hadolint_passes_on_every_dockerfile():
    hadolint = Path(sys.executable).parent / "hadolint"
    dockerfiles = sorted(
        path for path in (ROOT / "docker").rglob("*") if path.name == "Dockerfile" or path.suffix == ".Dockerfile"
    )
    assert DOCKERFILE in dockerfiles
    for dockerfile in dockerfiles:
        result = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True)
        assert result.returncode == 0, f"{dockerfile}:\n{result.stdout}{result.stderr}"


# The image's code: what `pip install /tmp/wan-triton` puts in the image and the stubs' model.py files.
# benchmarks/ is left out: its [bench] extra (plots) is not part of the image.
SERVED_CODE = ("wan_triton", "export", "client", "model_repository")
# Imports the image meets without the lock: the Python backend's own module, nvidia-pytriton (the NGC
# image has tritonserver; serve only looks for it where tritonserver is not on PATH).
PROVIDED = {"triton_python_backend_utils", "pytriton"}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, at module level or inside functions."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_lock_covers_every_distribution_the_served_code_imports():
    from importlib.metadata import packages_distributions

    distributions = packages_distributions()
    locked = pins(LOCK)
    missing = {}
    for folder in SERVED_CODE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for module in imported_modules(path) - set(sys.stdlib_module_names) - PROVIDED - {"wan_triton"}:
                names = {REPLACED.get(canonicalize_name(d), canonicalize_name(d)) for d in distributions[module]}
                if not names & locked.keys():
                    missing.setdefault(module, []).append(str(path.relative_to(ROOT)))
    assert missing == {}, "imported by the image's code, not in constraints/image.txt (docker/lock.sh)"


# The lock's CUDA-only distributions: this machine has no GPU, so the lock venv goes without them and takes
# the CPU builds of the same versions for torch (its wheel on disk) and onnxruntime.
CUDA_ONLY = re.compile(r"nvidia-.*|cuda-.*|triton")
STAND_INS = {"onnxruntime-gpu": "onnxruntime"}


@pytest.fixture(scope="module")
def lock_venv(tmp_path_factory) -> Path:
    """A fresh venv holding exactly the lock's pins, installed as the Dockerfile does: --no-deps, wheels
    only, then the project --no-deps, then pip check. nvidia-pytriton stands in for the image's
    tritonserver, installed after the check (its own dependencies are for its Python API, unused here)."""
    root = tmp_path_factory.mktemp("lock")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    requirements = root / "requirements.txt"
    lines = [
        f"{STAND_INS.get(name, name)}=={version}"
        for name, version in pins(LOCK).items()
        if not CUDA_ONLY.fullmatch(name)
    ]
    requirements.write_text("\n".join(lines) + "\n")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "--only-binary=:all:"]
    subprocess.run([*pip, "-r", str(requirements)], check=True)
    # From a copy of the sources, as the Dockerfile does: setuptools would leave build/ in the checkout.
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("wan_triton", "export", "client", "benchmarks"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([*pip[:-1], "--no-build-isolation", str(source)], check=True, cwd=root)
    check = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    pytriton = pins(ROOT / "constraints" / "dev.txt")["nvidia-pytriton"]
    subprocess.run([*pip, f"nvidia-pytriton=={pytriton}"], check=True)
    return venv


def test_every_module_imports_from_the_lock_alone(lock_venv):
    """Every module of the package imports in the lock's venv; the stubs' modules without tritonclient or
    grpc (config rendering stays off their import path)."""
    script = """
import importlib, pkgutil, sys
import wan_triton
stubs = ["entry", "text_encoder", "denoiser", "vae", "image_encoder", "audio_encoder", "video_encoder"]
for stub in stubs:
    importlib.import_module(f"wan_triton.serving.{stub}")
loaded = sorted(name for name in ("tritonclient", "grpc") if name in sys.modules)
assert not loaded, f"the stubs' modules import {loaded}"
names = [m.name for m in pkgutil.walk_packages(wan_triton.__path__, "wan_triton.")]
for name in names:
    if not name.startswith("wan_triton.benchmarks"):
        importlib.import_module(name)
print(len(names))
"""
    # Run outside the checkout, so only the installed package can be imported.
    result = subprocess.run(
        [str(lock_venv / "bin" / "python"), "-c", script], capture_output=True, text=True, cwd=lock_venv
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout) > 40


def test_the_lock_serves_a_generation(lock_venv, tiny_checkpoint, exported_repository, tmp_path):
    """`wan-triton serve` from the lock's venv (its stubs run there too) and `wan-triton generate` from it:
    one tiny video over gRPC, then a clean stop."""
    from conftest import serve, stop

    from wan_triton.serving.server import stub_processes

    served = serve(tiny_checkpoint, exported_repository, tmp_path, python=str(lock_venv / "bin" / "python"))
    try:
        # Every stub's interpreter took its packages from the lock's venv, none from this one.
        for pid in stub_processes(served.repository):
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert str(lock_venv) in maps and f"{sys.prefix}/" not in maps, pid
        output = tmp_path / "video.mp4"
        command = [str(lock_venv / "bin" / "wan-triton"), "generate", "a red cat", "-o", str(output)]
        command += ["--url", served.url, "--height", "32", "--width", "48", "--num-frames", "5"]
        command += ["--num-inference-steps", "2", "--seed", "1"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert output.read_bytes()[4:8] == b"ftyp"
    finally:
        stop(served)
