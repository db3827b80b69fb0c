"""Parity of the exported text encoder at UMT5-XXL's real depth: what the export gate reads there.

    python benchmarks/deep_text_encoder.py [--out benchmarks/results/deep_text_encoder.json]

Builds the `depth` checkpoint (24 layers of UMT5-XXL's 4096 residual width, narrow attention and
feed-forward: 0.35B random parameters, wan_triton/checkpoints/tiny.py), exports its text encoder with
the real export code and reports, per parity case, the max abs error against torch, the output's scale,
their ratio (what the gate holds to 1e-4) and the cosine similarity. A benchmark, not a test: the
export takes minutes and gigabytes on a CPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/deep_text_encoder.json"))
    args = parser.parse_args(argv)
    from wan_triton.checkpoints import build_checkpoint
    from wan_triton.export import MIN_COSINE, TOLERANCE, export
    from wan_triton.plan import parameters

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = build_checkpoint(Path(folder) / "depth", size="depth")
        started = time.perf_counter()
        details = export(checkpoint, Path(folder) / "repository", parts=["text_encoder"])["text_encoder"]
        report = {
            "text_encoder_parameters": parameters(checkpoint, "text_encoder"),
            "config": json.loads((checkpoint / "text_encoder" / "config.json").read_text()),
            "export_s": round(time.perf_counter() - started, 1),
            "exporter": details["graphs"]["model"]["exporter"],
            "gate": {"tolerance": TOLERANCE, "min_cosine": MIN_COSINE},
            "cases": details["parity"]["cases"],
            "absolute_gate_1e-4_would_pass": all(c["max_abs_error"] <= 1e-4 for c in details["parity"]["cases"]),
        }
    report["config"] = {k: report["config"][k] for k in ("d_model", "d_kv", "d_ff", "num_layers", "num_heads")}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
