"""`wan-triton export`: the text encoder and the VAE halves to ONNX, verified.

Each part lands in its Triton model's version folder with a manifest beside it; a current
manifest means nothing is rebuilt. Every export is checked against torch on fixed inputs and
fails past tolerance, leaving no unverified graph behind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from wan_triton.pipeline.checkpoint import Checkpoint
from wan_triton.pipeline.layout import open_checkpoint
from wan_triton.repository import MANIFEST, ONNX_FILES, version_dir

from . import manifest
from .parts import SOURCE_FOLDERS, load_part, parts_of

# The parity gate of fp32 ONNX Runtime against torch, per case: max abs error <= TOLERANCE x the output's
# scale (its max abs value, at least 1) and cosine similarity >= MIN_COSINE. Outputs of order 1 (the
# VAE's frames and latents) keep an absolute 1e-4; a deep encoder's hidden states, whose magnitudes grow
# with depth (UMT5-XXL's reach the hundreds), are held to the same 1e-4 relative to their size.
TOLERANCE = 1e-4
MIN_COSINE = 1 - 1e-6
# The shape profiles recorded per graph for ONNX Runtime's TensorRT provider (`serve --tensorrt`):
# batch and sequence absolute, height/width as multiples of the export sample (5x7 latents): from
# 40 px to 1280 px (height) / 1792 px (width); audio samples as multiples of its 1.3 s sample.
PROFILE_SCALE = {
    "batch": (1, 1, 4),
    "sequence": (1, 512, 512),
    "height": (1, 12, 32),
    "width": (1, 12, 32),
    "samples": (1, 4, 48),  # wav2vec2's input, as multiples of the 1.3 s sample: up to a minute
}


class ExportError(RuntimeError):
    pass


def export(
    checkpoint_dir: str | Path,
    repository: str | Path,
    parts: Sequence[str] | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
    verify: bool = True,
) -> dict[str, dict]:
    """Export `parts` (default: every part the checkpoint has) into `repository`; returns each
    part's manifest details. Without `verify`, files the manifests fingerprint as unchanged keep their
    recorded hashes (manifest.py)."""
    checkpoint = open_checkpoint(checkpoint_dir)
    parts = parts_of(checkpoint) if parts is None else parts
    return {name: _export_part(checkpoint, Path(repository), name, force, verify, log) for name in parts}


def _export_part(
    checkpoint: Checkpoint, repository: Path, name: str, force: bool, verify: bool, log: Callable[[str], None]
) -> dict:
    from .to_onnx import export_graph, parity, runners, signature

    out = version_dir(repository, name)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    known = manifest.read(manifest_path).get("sources")
    sources = manifest.hashes(checkpoint.weight_files(SOURCE_FOLDERS[name]), checkpoint.root, known, verify)
    wanted = manifest.key(name, manifest.source_hash(sources))
    files = None if force else manifest.current_files(manifest_path, wanted, verify)
    if files is not None:
        manifest.refresh(manifest_path, sources, files)
        log(f"{name}: current ({manifest_path}), reused")
        return {"reused": True}
    if not os.access(out, os.W_OK):  # an image's baked repository, served for another checkpoint
        raise ExportError(
            f"{name}: {out} is stale for {checkpoint.root} and read-only: export into a writable "
            "repository, or rebuild the image from this checkpoint"
        )
    manifest_path.unlink(missing_ok=True)

    part = load_part(checkpoint, name)
    graph_list, cases = list(part.graphs()), list(part.cases())
    failures = []
    for exporter in part.exporters:
        started = time.perf_counter()
        try:
            written, graphs = [], {}
            for graph in graph_list:
                path = out / ONNX_FILES[name][graph.key]
                written += export_graph(graph, path, exporter)
                profile = [list(map(list, shapes)) for shapes in graph.profile(PROFILE_SCALE).values()]
                graphs[graph.key] = {
                    "file": path.name,
                    "exporter": exporter,
                    **signature(path),
                    "profile": dict(zip(graph.input_names, profile, strict=True)),
                }
            export_seconds = time.perf_counter() - started
            results = parity(cases, runners({key: out / g["file"] for key, g in graphs.items()}))
        except Exception as exc:  # an exporter that cannot handle the model: try the next
            failures.append(f"{exporter}: {_summary(exc)}")
            log(f"{name}: {failures[-1]}")
            continue
        worst, cosine = max(r["error"] for r in results), min(r["cosine"] for r in results)
        for r in results:
            log(
                f"{name}: {exporter} parity, {r['case']}: max abs error {r['max_abs_error']:.2e} "
                f"(scale {r['scale']:.3g}, relative {r['error']:.2e}, cosine {r['cosine']:.9f})"
            )
        if worst <= TOLERANCE and cosine >= MIN_COSINE:
            break
        failures.append(f"{exporter}: scaled error {worst:.2e} (<= {TOLERANCE:.0e}), cosine {cosine:.9f}")
        log(f"{name}: {failures[-1]}")
    else:
        for path in out.glob("*.onnx*"):
            path.unlink()
        raise ExportError(f"{name}: no exporter gives parity with torch ({'; '.join(failures)}); nothing kept")
    log(f"{name}: exported with {exporter} in {export_seconds:.1f} s, scaled error {worst:.2e} <= {TOLERANCE:.0e}")

    details = {
        "graphs": graphs,
        "parity": {"tolerance": TOLERANCE, "min_cosine": MIN_COSINE, "cases": results},
        "rejected_exporters": failures,
        "export_seconds": round(export_seconds, 2),
    }
    manifest.write(manifest_path, wanted, written, details, sources)
    return details


def _summary(exc: Exception) -> str:
    """One line of an exporter's (often page-long) error: its exception summary where it has one."""
    lines = [line for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    return next((line for line in lines if line.startswith("<class")), lines[0])[:300]
