#!/bin/bash
# Issue 13: real cpu-quick searches for F* = 0.3 and 0.7 (δ 0.05) with the default strategy
# (Algorithm 1, early decisions on) and the fastest on the replay (secant), plus a warm-started
# secant search and Algorithm 1 without early decisions (0.7, 0.3), one after another, each with one torch
# thread. A finished search (its result.json) is skipped, so the queue resumes where it stopped.
# The first one runs the final job too (issue 15 looks at its MLflow runs and artifacts).
#
# Every search of this queue trains afresh (--no-reuse-trials): they measure one search each.
# The "reuse" queue (third argument) is one user's searches in one store, each starting from the
# trials of the ones before it (reuse_trials, on by default), beside Algorithm 1 trained afresh.
#
#   experiments/real_searches.sh DATA_DIR OUT_DIR [reuse]      then
#   .venv/bin/python experiments/real_searches_report.py OUT_DIR/*/   (-> experiments/results/real-searches.json)
set -u
DATA=$1 OUT=$2 QUEUE=${3:-single}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
run() {  # name, flags...
  local name=$1; shift
  [ -f "$OUT/$name/result.json" ] && { echo "skip $name"; return; }
  local start=$(date +%s)
  echo "== $name start $(date) load $(cut -d' ' -f1-3 /proc/loadavg)"
  .venv/bin/polarsearch --preset cpu-quick --data-dir "$DATA" --delta 0.05 --threads 1 \
     --mlflow-uri "sqlite:///$(realpath "$OUT")/mlflow.db" --output "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name rc $? wall $(( $(date +%s) - start )) s load $(cut -d' ' -f1-3 /proc/loadavg)"
}
if [ "$QUEUE" = reuse ]; then
  run R1-0.3-secant --target-flops 0.3 --strategy secant --skip-final
  run R2-0.5-secant-reuse --target-flops 0.5 --strategy secant --skip-final
  run R3-0.7-secant-reuse --target-flops 0.7 --strategy secant --skip-final
  run R4-0.4-algorithm1-reuse --target-flops 0.4 --skip-final
  run R5-0.4-algorithm1-afresh --target-flops 0.4 --skip-final --no-reuse-trials --no-early-decisions
  echo "queue done $(date)"
  exit 0
fi
run A-0.3-algorithm1 --target-flops 0.3 --no-reuse-trials
run B-0.3-secant --target-flops 0.3 --strategy secant --skip-final --no-reuse-trials
run C-0.7-algorithm1 --target-flops 0.7 --skip-final --no-reuse-trials
run D-0.7-secant --target-flops 0.7 --strategy secant --skip-final --no-reuse-trials
run E-0.3-secant-warm --target-flops 0.3 --strategy secant --skip-final --warm-start-epochs 30 --no-reuse-trials
run F-0.7-algorithm1-noearly --target-flops 0.7 --skip-final --no-early-decisions --no-reuse-trials
run H-0.3-algorithm1-noearly --target-flops 0.3 --skip-final --no-early-decisions --no-reuse-trials
echo "queue done $(date)"
