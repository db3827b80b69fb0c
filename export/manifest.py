"""Export manifests: what an artifact was built from, so stale ones are rebuilt and current ones reused.

An artifact is current when its manifest's key (source weights hash, recipe, format, precision,
opset, exporter library versions) equals the key of the export being asked for, and every file
it lists still has the recorded hash.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

# Bump when the export code changes what it writes for the same inputs.
RECIPE = 1
OPSET = 18
LIBRARIES = ("torch", "onnx", "onnxscript", "onnxruntime", "diffusers", "transformers", "wan-triton")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def source_hash(files: list[Path], root: Path) -> str:
    """One hash over the relative names and bytes of the source files."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(sha256(path).encode())
    return digest.hexdigest()


def versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        # A module can come from another distribution (onnxruntime from onnxruntime-gpu in the image).
        owners = metadata.packages_distributions().get(name.replace("-", "_"), [name])
        try:
            found[name] = metadata.version(owners[0])
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def key(part: str, source: str, fmt: str, precision: str) -> dict:
    return {
        "part": part,
        "source_sha256": source,
        "recipe": RECIPE,
        "format": fmt,
        "precision": precision,
        "opset": OPSET,
        "versions": versions(),
    }


def is_current(path: Path, wanted: dict) -> bool:
    if not path.is_file():
        return False
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if manifest.get("key") != wanted:
        return False
    files = manifest.get("files", {})
    return bool(files) and all(
        (path.parent / name).is_file() and sha256(path.parent / name) == digest for name, digest in files.items()
    )


def write(path: Path, wanted: dict, files: list[Path], details: dict) -> None:
    manifest = {"key": wanted, "files": {f.name: sha256(f) for f in files}, **details}
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
