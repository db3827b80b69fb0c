#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): bash benchmarks/gpu_check.sh [--cpu] [--out DIR]
set -euo pipefail
exec "${PYTHON:-python3}" -m wan_triton.benchmarks.gpu_check "$@"
