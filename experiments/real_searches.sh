#!/bin/bash
# Issue 13: real cpu-quick searches for F* = 0.3 and 0.7 (δ 0.05) with the default strategy
# (Algorithm 1, early decisions on) and the fastest on the replay (secant), plus a warm-started
# secant search and Algorithm 1 without early decisions (0.7, 0.3), one after another, each with one torch
# thread. A finished search (its result.json) is skipped, so the queue resumes where it stopped.
# The first one runs the final job too (issue 15 looks at its MLflow runs and artifacts).
#
#   experiments/real_searches.sh DATA_DIR OUT_DIR      then
#   .venv/bin/python experiments/real_searches_report.py OUT_DIR/*/   (-> experiments/results/real-searches.json)
set -u
DATA=$1 OUT=$2
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
run A-0.3-algorithm1 --target-flops 0.3
run B-0.3-secant --target-flops 0.3 --strategy secant --skip-final
run C-0.7-algorithm1 --target-flops 0.7 --skip-final
run D-0.7-secant --target-flops 0.7 --strategy secant --skip-final
run E-0.3-secant-warm --target-flops 0.3 --strategy secant --skip-final --warm-start-epochs 30
run F-0.7-algorithm1-noearly --target-flops 0.7 --skip-final --no-early-decisions
run H-0.3-algorithm1-noearly --target-flops 0.3 --skip-final --no-early-decisions
echo "queue done $(date)"
