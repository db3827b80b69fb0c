#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): bash benchmarks/gpu_check.sh [--cpu] [--out DIR]
# Then, on a machine with 2 GPUs or more, parallel mode (benchmarks/parallel.py): seconds per step
# with ulysses 2/4/8 and cfg 2 on the GPUs present, at 480p and 720p, 81 frames. The transformer has
# Wan2.1-14B's shape with random weights (40 heads: ulysses up to 8) unless
# WAN_TRITON_PARALLEL_CHECKPOINT names a real folder (/models/Wan2.1-T2V-14B-Diffusers).
set -euo pipefail
python=${PYTHON:-python3}
"$python" -m wan_triton.benchmarks.gpu_check "$@"

out=.
while [ $# -gt 0 ]; do
    case $1 in
        --cpu) exit 0 ;;
        --out) out=$2; shift ;;
    esac
    shift
done
gpus=$("$python" -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -lt 2 ]; then
    echo "parallel mode: skipped, $gpus GPU(s) here" >&2
    exit 0
fi
checkpoint=(--shape t2v-14b)
if [ -n "${WAN_TRITON_PARALLEL_CHECKPOINT:-}" ]; then
    checkpoint=(--checkpoint "$WAN_TRITON_PARALLEL_CHECKPOINT")
fi
for size in 480x832 720x1280; do
    "$python" -m wan_triton.benchmarks.parallel --device cuda "${checkpoint[@]}" \
        --height "${size%x*}" --width "${size#*x}" --num-frames 81 --steps 4 --out "$out/parallel_${size}.json"
done
