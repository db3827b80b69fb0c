"""Export: named graphs with dynamic axes, parity with torch, manifests that decide reuse."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from wan_triton.checkpoints import build_checkpoint
from wan_triton.export import MIN_COSINE, TOLERANCE, ExportError, export, manifest
from wan_triton.export.parts import PART_NAMES, TextEncoderPart
from wan_triton.repository import MANIFEST, ONNX_FILES, version_dir


def manifest_of(repository, part):
    return json.loads((version_dir(repository, part) / MANIFEST).read_text())


@pytest.mark.parametrize("part", PART_NAMES)
def test_every_part_is_verified_and_recorded(exported_repository, part):
    record = manifest_of(exported_repository, part)
    assert set(record["files"]) == set(ONNX_FILES[part].values())
    cases = record["parity"]["cases"]
    assert len(cases) >= 2 and all(c["max_abs_error"] <= TOLERANCE for c in cases)
    assert record["key"]["source_sha256"] and record["key"]["opset"] == manifest.OPSET
    assert record["key"]["versions"]["torch"].startswith("2.")


def test_graphs_have_names_and_dynamic_axes(exported_repository):
    text = manifest_of(exported_repository, "text_encoder")["graphs"]["model"]
    assert [i["name"] for i in text["inputs"]] == ["input_ids", "attention_mask"]
    assert all(isinstance(d, str) for d in text["inputs"][0]["shape"])  # batch and sequence
    step = manifest_of(exported_repository, "vae_decoder")["graphs"]["step"]
    latent = step["inputs"][0]
    assert latent["name"] == "latent" and step["outputs"][0]["name"] == "video"
    assert [isinstance(d, str) for d in latent["shape"]] == [True, False, False, True, True]
    assert latent["shape"][2] == 1  # one latent frame per chunk, by design
    assert [i["name"] for i in step["inputs"][1:]] == [o["name"].replace("out", "in") for o in step["outputs"][1:]]


def test_current_artifacts_are_reused(tiny_checkpoint, exported_repository):
    started = time.perf_counter()
    report = export(tiny_checkpoint, exported_repository)
    assert all(r == {"reused": True} for r in report.values())
    assert time.perf_counter() - started < 30


def test_stale_or_tampered_artifacts_are_not_current(exported_repository, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(exported_repository, copy)
    path = version_dir(copy, "vae_decoder") / MANIFEST
    key = json.loads(path.read_text())["key"]
    assert manifest.is_current(path, key)
    assert not manifest.is_current(path, {**key, "source_sha256": "0" * 64})
    assert not manifest.is_current(path, {**key, "versions": {**key["versions"], "torch": "0.0"}})
    with (path.parent / "step.onnx").open("ab") as handle:
        handle.write(b"\0")
    assert not manifest.is_current(path, key)


def test_a_graph_off_by_more_than_the_tolerance_is_refused_and_removed(tiny_checkpoint, tmp_path, monkeypatch):
    honest = TextEncoderPart.cases

    def shifted(self):
        for case in honest(self):
            case.reference = case.reference + 1e-3 * max(1.0, float(abs(case.reference).max()))
            yield case

    monkeypatch.setattr(TextEncoderPart, "cases", shifted)
    monkeypatch.setattr(TextEncoderPart, "exporters", ("dynamo",))
    with pytest.raises(ExportError, match="no exporter gives parity"):
        export(tiny_checkpoint, tmp_path, parts=["text_encoder"], log=lambda _: None)
    assert not list(version_dir(tmp_path, "text_encoder").glob("*.onnx*"))
    assert not (version_dir(tmp_path, "text_encoder") / MANIFEST).exists()


def test_the_parity_gate_scales_with_the_output_and_reads_the_cosine():
    """1e-4 absolute for outputs of order 1, 1e-4 of the scale for large ones (a deep encoder's hidden
    states), and a cosine that catches a pattern error small in every element."""
    from wan_triton.export.parts import Case
    from wan_triton.export.to_onnx import parity

    rng = np.random.default_rng(0)
    small, large = rng.uniform(-1, 1, 4096), rng.uniform(-300, 300, 4096)

    def result(reference, got):
        return parity([Case("c", reference, lambda _: got)], {})[0]

    assert result(small, small + 5e-5)["error"] <= TOLERANCE
    assert result(small, small + 5e-4)["error"] > TOLERANCE
    assert result(large, large + 1e-2)["error"] <= TOLERANCE  # 3e-5 of 300: fine in fp32 at depth
    assert result(large, large + 1e-1)["error"] > TOLERANCE
    flipped = small.copy()
    flipped[::2] *= -1
    assert result(small, flipped)["cosine"] < MIN_COSINE


def cli(*args):
    return subprocess.run([sys.executable, "-m", "wan_triton.cli", "export", *args], capture_output=True, text=True)


def test_unchanged_files_are_not_hashed_again_without_verify(
    tiny_checkpoint, exported_repository, tmp_path, monkeypatch
):
    """serve's start (verify off) reads no weight or exported file whose size, mtime and inode its manifest
    recorded; a touched file is hashed again; a same-size, same-mtime rewrite is caught only by verify."""
    checkpoint, repository = tmp_path / "checkpoint", tmp_path / "repo"
    shutil.copytree(tiny_checkpoint, checkpoint)
    shutil.copytree(exported_repository, repository)
    # A copy has new inodes and mtimes: the first check after copying hashes everything once.
    assert all(r == {"reused": True} for r in export(checkpoint, repository, log=lambda _: None).values())
    for part in ONNX_FILES:  # the manifest now records the copies' fingerprints
        path = version_dir(repository, part) / MANIFEST
        if path.is_file():
            record = json.loads(path.read_text())
            assert record["sources"] and all(len(s["fingerprint"]) == 3 for s in record["sources"].values())
    read = []
    original = manifest.sha256
    monkeypatch.setattr(manifest, "sha256", lambda path: read.append(path) or original(path))
    assert all(r == {"reused": True} for r in export(checkpoint, repository, log=lambda _: None, verify=False).values())
    assert read == []

    weights = next((checkpoint / "vae").glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000_000))
    assert export(checkpoint, repository, parts=["vae_decoder"], log=lambda _: None, verify=False) == {
        "vae_decoder": {"reused": True}
    }
    assert read == [weights]

    graph = version_dir(repository, "vae_decoder") / "step.onnx"
    stat = graph.stat()
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF
    graph.write_bytes(bytes(data))
    os.utime(graph, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    path = version_dir(repository, "vae_decoder") / MANIFEST
    key = json.loads(path.read_text())["key"]
    assert manifest.is_current(path, key, verify=False)
    assert not manifest.is_current(path, key, verify=True)


def test_each_graph_records_its_tensorrt_shape_profile(exported_repository):
    record = json.loads((version_dir(exported_repository, "text_encoder") / MANIFEST).read_text())
    profile = record["graphs"]["model"]["profile"]
    assert set(profile) == {"input_ids", "attention_mask"}  # the manifest sorts its keys
    assert profile["input_ids"] == [[1, 1], [1, 512], [4, 512]]
    decoder = json.loads((version_dir(exported_repository, "vae_decoder") / MANIFEST).read_text())["graphs"]
    for graph in decoder.values():
        assert set(graph["profile"]) == {i["name"] for i in graph["inputs"]}
        for low, opt, high in graph["profile"].values():
            assert all(a <= b <= c for a, b, c in zip(low, opt, high, strict=True))


def test_export_has_no_format_or_precision_options(tiny_checkpoint, tmp_path):
    """ONNX only (TensorRT runs the same graphs through ONNX Runtime: serve --tensorrt)."""
    result = cli("--checkpoint", str(tiny_checkpoint), "--repository", str(tmp_path), "--format", "tensorrt")
    assert result.returncode == 2 and "unrecognized arguments: --format" in result.stderr


def test_cli_reports_the_measured_error(tiny_checkpoint, exported_repository):
    result = cli(
        "--checkpoint",
        str(tiny_checkpoint),
        "--repository",
        str(exported_repository),
        "--force",
        "--parts",
        "text_encoder",
    )
    assert result.returncode == 0, result.stderr
    assert "max abs error" in result.stdout and "<= 1e-04" in result.stdout


@pytest.mark.slow
def test_bench_size_checkpoint_exports_with_parity(tmp_path):
    """The full-size path: larger widths and depths through the same export code."""
    checkpoint = build_checkpoint(tmp_path / "bench", size="bench")
    report = export(checkpoint, tmp_path / "repo", log=lambda _: None)
    for details in report.values():
        assert max(c["max_abs_error"] for c in details["parity"]["cases"]) <= TOLERANCE
