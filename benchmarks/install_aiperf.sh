#!/usr/bin/env bash
# AIPerf (NVIDIA's benchmark for AI endpoints) in a venv of its own: it needs Python >= 3.11 and brings
# dependencies (aiohttp, zmq, textual, ...) that have no place in the project's environment.
# Usage: benchmarks/install_aiperf.sh DIR   -> DIR/bin/aiperf
set -euo pipefail
dir=${1:?usage: install_aiperf.sh DIR}
python=${PYTHON:-python3.11}
if [ ! -x "$dir/bin/aiperf" ]; then
    "$python" -m venv "$dir"
    "$dir/bin/pip" install -q 'aiperf==0.13.0'
fi
"$dir/bin/aiperf" --version >/dev/null
echo "$dir/bin/aiperf"
