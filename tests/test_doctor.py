"""`wan-triton doctor`: this environment passes, and what broke the seed's image (a dependency that does
not import, numpy and torch that cannot exchange arrays, no GPU where one is expected) is named."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
import torch
from packaging.requirements import Requirement

from wan_triton import doctor
from wan_triton.cli import parser

PROJECT = Path(__file__).resolve().parent.parent
GPU_CHECKS = {"cuda", "cudnn", "onnxruntime providers"}  # required with --gpu
BROKEN_PEFT = 'raise ImportError("simulated: peft was built for another Python")\n'
# What a torch built against numpy 1 does under numpy 2: it imports, then cannot take a numpy array.
BROKEN_FROM_NUMPY = """
import importlib.util
import sys


class BreakFromNumpy:
    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)

            def from_numpy(array):
                raise RuntimeError("Numpy is not available")

            module.from_numpy = from_numpy

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, BreakFromNumpy())
"""
# numpy itself does not import: the doctor module must still run (it imports only the standard library).
WITHOUT_NUMPY = "import sys; sys.modules['numpy'] = None; from wan_triton.doctor import main; sys.exit(main([]))"


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def rows(self) -> dict[str, tuple[str, str]]:
        """The table: check -> (status, detail)."""
        rows = (re.fullmatch(r"(.+?)\s{2,}(ok|info|warn|fail)\s*(.*)", line) for line in self.stdout.splitlines()[1:])
        return {row[1]: (row[2], row[3]) for row in rows if row}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    """Every doctor process started at once: each spends most of its ~10 s importing torch and diffusers."""
    broken = tmp_path_factory.mktemp("broken")  # first on PYTHONPATH: a peft that fails, a torch that cannot
    (broken / "peft").mkdir()
    (broken / "peft" / "__init__.py").write_text(BROKEN_PEFT)
    (broken / "sitecustomize.py").write_text(BROKEN_FROM_NUMPY)

    def start(*args: str, shim: Path | None = None) -> subprocess.Popen:
        env = {name: value for name, value in os.environ.items() if name != doctor.EXPECT_GPU_ENV}
        if shim is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), env.get("PYTHONPATH")]))
        return subprocess.Popen(args, env=env, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    cli = (sys.executable, "-m", "wan_triton.cli", "doctor")
    started = {
        "default": start(*cli),
        "gpu": start(*cli, "--gpu", "--export", "--json"),
        "broken": start(*cli, shim=broken),
        "no numpy": start(sys.executable, "-c", WITHOUT_NUMPY),
    }
    outputs = {name: process.communicate(timeout=300) for name, process in started.items()}
    return {name: Run(started[name].returncode, *output) for name, output in outputs.items()}


def test_this_environment_passes_with_the_installed_versions(runs):
    run = runs["default"]
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[-1] == "every required check passed"
    rows = run.rows()
    for name in ("torch", "numpy", "diffusers", "transformers", "peft", "sentencepiece", "onnxruntime", "av"):
        assert rows[name] == ("ok", metadata.version(name)), name
    assert rows["numpy/torch"][0] == "ok"
    assert rows["mp4 encode"][0] == "ok" and "h264 + aac" in rows["mp4 encode"][1]
    status, detail = rows["tritonserver"]
    binary = re.fullmatch(r"\d+\.\d+\.\d+ (\S+) \(.*\)", detail)
    assert status == "ok" and Path(binary[1]).is_file()
    assert all(status != "fail" for status, _ in rows.values())  # GPU checks are informational by default
    assert rows["cuda"][0] == ("ok" if torch.cuda.is_available() else "info")


def test_gpu_expected_requires_cuda_and_json_lists_every_check(runs):
    run = runs["gpu"]
    report = json.loads(run.stdout)
    rows = {row["name"]: row for row in report["checks"]}
    assert report["gpu"] and report["export"]
    assert rows["onnx"]["status"] == "ok" and rows["onnxscript"]["status"] == "ok"  # --export adds its extra
    assert rows["torch"]["detail"] == metadata.version("torch")
    assert all(rows[name]["required"] for name in GPU_CHECKS)
    assert not rows["nvenc"]["required"]  # the project encodes with libx264; H100/H200 have no NVENC
    # Only the GPU stack may be missing; every other check passes here.
    assert all(row["status"] != "fail" for row in report["checks"] if row["name"] not in GPU_CHECKS)
    if torch.cuda.is_available():
        assert "cuda" not in report["missing"]
    else:
        assert run.returncode == 1 and not report["ok"]
        assert "cuda" in report["missing"] and set(report["missing"]) <= GPU_CHECKS
        assert "CPU build" in rows["cuda"]["detail"] or "no GPU" in rows["cuda"]["detail"]


def test_a_dependency_that_fails_to_import_is_missing_with_its_error(runs):
    run = runs["broken"]
    rows = run.rows()
    assert run.returncode == 1
    assert rows["peft"] == ("fail", "ImportError: simulated: peft was built for another Python")
    assert re.search(r"^  peft\s+pip install 'peft>=", run.stdout, re.MULTILINE)
    # diffusers wraps it ("Failed to import diffusers.loaders...: look up ..."); the root cause is shown.
    assert rows["serving code"] == rows["peft"]
    assert rows["torch"][0] == "ok"  # the rest still ran
    assert run.stdout.splitlines()[-1] == "missing: peft, numpy/torch, serving code"


def test_numpy_and_torch_that_cannot_exchange_arrays_fail(runs):
    run = runs["broken"]
    assert run.rows()["numpy/torch"] == ("fail", "RuntimeError: Numpy is not available")
    assert re.search(r"^  numpy/torch\s+pip install 'numpy", run.stdout, re.MULTILINE)


def test_it_reports_even_when_numpy_does_not_import(runs):
    run = runs["no numpy"]
    assert run.returncode == 1, run.stderr
    rows = run.rows()
    assert rows["numpy"][0] == "fail" and rows["tritonserver"][0] == "fail"  # serving.server imports numpy
    assert rows["python"][0] == "ok"
    assert run.stdout.splitlines()[-1].startswith("missing: numpy")


def test_build_ignores_the_gpu_expectation_and_gpu_excludes_build():
    args = parser().parse_args(["doctor", "--build"])
    assert not doctor.expect_gpu(args, {doctor.EXPECT_GPU_ENV: "1"})
    assert doctor.expect_gpu(parser().parse_args(["doctor"]), {doctor.EXPECT_GPU_ENV: "1"})
    assert not doctor.expect_gpu(parser().parse_args(["doctor"]), {doctor.EXPECT_GPU_ENV: "0"})
    with pytest.raises(SystemExit):
        parser().parse_args(["doctor", "--build", "--gpu"])


def test_requirements_come_from_the_declared_extras():
    path = doctor.source_pyproject()
    assert path == PROJECT / "pyproject.toml"
    lines = doctor.pyproject_requirements(path)
    serving, export = doctor.requirements_of(lines, "server"), doctor.requirements_of(lines, "export")
    assert {"numpy", "av", "torch", "peft", "ftfy", "sentencepiece"} <= set(serving)
    assert "onnx" not in serving and {"onnx", "onnxscript"} <= set(export)
    assert "wan-triton" not in export  # the export extra's self-reference is not a package to import
    assert ("decord" in serving) == (platform.machine() == "x86_64")  # platform markers apply
    numpy = next(line for line in tomllib.loads(path.read_text())["project"]["dependencies"] if "numpy" in line)
    assert serving["numpy"].specifier == Requirement(numpy).specifier


def test_severity_follows_required_or_optional():
    def broken() -> str:
        raise ModuleNotFoundError("No module named 'decord'\nmore lines")

    required = doctor.evaluate(doctor.Check("decord", broken, "fail", "pip install decord"))
    optional = doctor.evaluate(doctor.Check("decord", broken, "warn", "pip install decord"))
    assert (required.status, required.detail) == ("fail", "ModuleNotFoundError: No module named 'decord'")
    assert optional.status == "warn" and not optional.required
    text = doctor.report([required, doctor.Result("torch", "ok", "2.13.0")])
    assert text.splitlines()[-1] == "missing: decord" and "  decord  pip install decord" in text


def test_a_one_node_onnx_session_opens():
    """The graph the GPU check opens on ONNX Runtime's CUDA provider, here on the CPU."""
    assert doctor.onnx_session_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_a_version_outside_the_declared_range_fails():
    installed = metadata.version("numpy")
    result = doctor.evaluate(doctor.Check("numpy", doctor.package(Requirement(f"numpy<{installed}"))))
    assert (result.status, result.detail) == ("fail", f"{installed} installed, <{installed} required")


def test_the_wheels_tritonserver_is_required_only_without_one_on_path(monkeypatch):
    monkeypatch.setattr(doctor.shutil, "which", lambda name: f"/opt/tritonserver/bin/{name}")
    assert doctor.optional_packages()["nvidia-pytriton"][0] == "info"  # NGC's container
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)
    assert "nvidia-pytriton" not in doctor.optional_packages()
    assert doctor.optional_packages()["decord"][0] == "warn"  # PyAV decodes without it
