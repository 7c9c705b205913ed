#!/usr/bin/env bash
# The GPU checks of issue 12, in under 8 minutes on one CUDA device (never run on one yet):
#   1. a 2-epoch cifar10-resnet56 trial with each GPU option (plain, bf16 autocast, channels_last,
#      torch.compile, all three): s/epoch, img/s, peak memory, on synthetic tensors;
#   2. the latency rows of bench/bench_speed.py (--quick) on the GPU;
#   3. pruned = masked for every registered model (and torchvision resnet50, mobilenet_v2) on CUDA.
# Runs pruning/ and trainers/ from this source tree on the machine's own torch (>= 2.11, with
# torchvision): no Ray, MLflow, Optuna, data set or registry needed. Results under $OUT (default
# bench/results/gpu).
#
#   bench/gpu.sh             # on the CUDA machine
#   bench/gpu.sh --dry-run   # the same steps on CPU, tiny sizes: checks the script, times nothing
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"

# each step has its own limit (7.75 minutes in all on the GPU); a step that fails or runs out is
# reported and the next one still runs
if [ "${1:-}" = "--dry-run" ]; then
    device=cpu train=(--epochs 1 --images 32 --batch-size 32 --options plain channels_last)
    speed=(--models resnet20 --runs 1) limits=(900 900 900)
else
    device=cuda train=(--epochs 2 --images 50000 --batch-size 128)
    speed=(--models resnet20 resnet56 vgg16 resnet50 mobilenet_v2) limits=(270 150 45)
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: use --dry-run')"
fi
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"

failed=()
step() {  # step NUMBER LIMIT TITLE COMMAND...
    local number=$1 limit=$2 title=$3
    shift 3
    echo "== $number/3 $title"
    timeout "$limit" "$@" || { echo "== step $number failed or ran past ${limit} s (exit $?)"; failed+=("$number"); }
}
step 1 "${limits[0]}" "training options (cifar10-resnet56, synthetic data)" \
    "$PY" bench/gpu_checks.py train --device "$device" "${train[@]}" --json "$OUT/train.json"
step 2 "${limits[1]}" "pruned-model latency (bench_speed --quick)" \
    "$PY" bench/bench_speed.py --quick --device "$device" "${speed[@]}" --json "$OUT/speed.json"
step 3 "${limits[2]}" "pruned = masked on $device" "$PY" bench/gpu_checks.py equivalence --device "$device"
if [ ${#failed[@]} -gt 0 ]; then echo "failed steps: ${failed[*]}"; exit 1; fi
echo "all three steps passed; results in $OUT"
