#!/usr/bin/env bash
# perf_analyzer without Docker (shared/ENVIRONMENT.md): the binary ships in the tritonclient 2.51
# wheel (newer wheels need glibc 2.38 or carry none); it needs libb64 and libcudart, even on CPU.
# Usage: benchmarks/install_perf_analyzer.sh DIR   -> DIR/bin/perf_analyzer
set -euo pipefail
dir=${1:?usage: install_perf_analyzer.sh DIR}
python=${PYTHON:-python3}
if [ ! -x "$dir/bin/perf_analyzer" ]; then
    "$python" -m pip install -q --target "$dir" --no-deps tritonclient==2.51.0 nvidia-cuda-runtime-cu12
fi
if ! ldconfig -p | grep -q libb64.so.0d; then
    if [ "$(id -u)" = 0 ]; then apt-get install -y -q libb64-0d >/dev/null; else sudo apt-get install -y -q libb64-0d >/dev/null; fi
fi
LD_LIBRARY_PATH="$dir/nvidia/cuda_runtime/lib:${LD_LIBRARY_PATH:-}" "$dir/bin/perf_analyzer" --version >/dev/null 2>&1
echo "$dir/bin/perf_analyzer"
