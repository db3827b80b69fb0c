"""Export manifests: what an artifact was built from, so stale ones are rebuilt and current ones reused.

An artifact is current when its manifest's key (source weights hash, recipe, opset, exporter library
versions) equals the key of the export being asked for, and every file it lists still has the
recorded hash.

Hashing is paid once: the manifest records each source and output file's hash with its size,
modification time and inode, and a later check takes the recorded hash of a file whose three are
unchanged (a 14B checkpoint is tens of GB: rehashing it at every pod start costs minutes). `verify`
hashes everything again (`wan-triton export` and `serve --verify`).
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

# Bump when the export code changes what it writes for the same inputs.
RECIPE = 2  # 2: TensorRT shape profiles and file fingerprints in the manifest
OPSET = 18
LIBRARIES = ("torch", "onnx", "onnxscript", "onnxruntime", "diffusers", "transformers", "wan-triton")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(path: Path) -> list[int]:
    """What tells a file unchanged without reading it: size, modification time (ns), inode."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def hashes(files: list[Path], root: Path, known: dict | None = None, verify: bool = True) -> dict[str, dict]:
    """Relative name -> {"sha256", "fingerprint"} for `files`; without `verify`, a file whose fingerprint
    `known` (a manifest's record) holds keeps the recorded hash instead of being read."""
    found = {}
    for path in sorted(files):
        name, stamp = str(path.relative_to(root)), fingerprint(path)
        record = (known or {}).get(name, {})
        unchanged = not verify and record.get("fingerprint") == stamp and "sha256" in record
        found[name] = {"sha256": record["sha256"] if unchanged else sha256(path), "fingerprint": stamp}
    return found


def source_hash(sources: dict[str, dict]) -> str:
    """One hash over the relative names and hashes of the source files (`hashes`)."""
    digest = hashlib.sha256()
    for name in sorted(sources):
        digest.update(name.encode())
        digest.update(sources[name]["sha256"].encode())
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


def key(part: str, source: str) -> dict:
    return {"part": part, "source_sha256": source, "recipe": RECIPE, "opset": OPSET, "versions": versions()}


def read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def current_files(path: Path, wanted: dict, verify: bool = True) -> dict[str, dict] | None:
    """The artifact's files (`hashes`) when its manifest has the `wanted` key and every file its hash;
    else None."""
    manifest = read(path)
    if manifest.get("key") != wanted or not manifest.get("files"):
        return None
    outputs = [path.parent / name for name in manifest["files"]]
    if not all(output.is_file() for output in outputs):
        return None
    found = hashes(outputs, path.parent, manifest["files"], verify)
    same = all(found[name]["sha256"] == record["sha256"] for name, record in manifest["files"].items())
    return found if same else None


def is_current(path: Path, wanted: dict, verify: bool = True) -> bool:
    return current_files(path, wanted, verify) is not None


def refresh(path: Path, sources: dict[str, dict], files: dict[str, dict]) -> None:
    """After a check found a current artifact: record the fingerprints its files have now (a copied or
    restored checkpoint has new inodes and mtimes), so the next check reads nothing. Not in a read-only
    folder (an image's baked repository keeps its manifests as built)."""
    manifest = read(path)
    if (manifest.get("sources"), manifest.get("files")) != (sources, files) and os.access(path.parent, os.W_OK):
        path.write_text(json.dumps({**manifest, "sources": sources, "files": files}, indent=2, sort_keys=True) + "\n")


def write(path: Path, wanted: dict, files: list[Path], details: dict, sources: dict[str, dict]) -> None:
    manifest = {"key": wanted, "files": hashes(files, path.parent), "sources": sources, **details}
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
