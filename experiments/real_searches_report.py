"""Issue 13: what each real search of experiments/real_searches.sh cost and found, as one JSON.

Per search folder (its search.json and result.json, and its MLflow store for the trials' times):
strategy, target, early decisions, warm start, trials, trial-epochs (summed over trials), the
winner and whether it is within δ, and the wall time of the trials (first trial's start to last
trial's end, MLflow's run times; the final job is not in it).

    .venv/bin/python experiments/real_searches_report.py RUNS/*/ [--out experiments/results/real-searches.json]

Trials recalled from earlier searches (status "earlier", `reuse_trials`) are counted apart
(reused_trials, reused_epochs): the search did not train them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "results" / "real-searches.json"


def row(folder: Path) -> dict[str, Any]:
    from mlflow import MlflowClient

    spec, result = (json.loads((folder / name).read_text()) for name in ("search.json", "result.json"))
    settings, config = spec["settings"], spec["config"]
    trials = [t for t in result["trials"] if t["status"] != "earlier"]  # trained by this search
    reused = [t for t in result["trials"] if t["status"] == "earlier"]  # recalled from earlier searches
    client = MlflowClient(tracking_uri=spec["mlflow_uri"])
    runs = client.search_runs([client.get_run(result["parent_run_id"]).info.experiment_id],
                              f"tags.mlflow.parentRunId = '{result['parent_run_id']}' and tags.`polarsearch.kind` = 'trial'")  # fmt: skip
    best = result.get("best")
    gap = None if best is None else abs(best["flops_reduction"] - settings["target"])
    return {
        "search": folder.name, "strategy": settings["strategy"], "target": settings["target"],
        "delta": settings["delta"], "early_decisions": settings["early_decisions"],
        "warm_start_epochs": config["warm_start_epochs"], "reuse_trials": settings.get("reuse_trials", False),
        "reused_trials": len(reused), "reused_epochs": sum(int(t["epochs"] or 0) for t in reused), "trials": len(trials),
        "trial_epochs": sum(int(t["epochs"]) for t in trials),
        "epochs_per_trial": [int(t["epochs"]) for t in trials], "statuses": [t["status"] for t in trials],
        "F": [round(t["flops_reduction"], 4) for t in trials],
        "winner": None if best is None else {k: best[k] for k in ("lam", "t", "flops_reduction")},
        "hit": gap is not None and gap <= settings["delta"], "status": result["status"],
        "trials_wall_s": round((max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000)
        if runs else 0,
        "search_s": round(result["seconds"]), "final": result.get("final") is not None,
        "threads": config["threads"],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = [row(f) for f in sorted(args.folders) if (f / "result.json").is_file()]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=OUT.parent).stdout.strip()  # fmt: skip
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps({"preset": "cpu-quick", "commit": commit, "machine": f"{os.cpu_count()} CPUs",
                               "searches": rows}, indent=1) + "\n")  # fmt: skip
    os.replace(tmp, args.out)
    for r in rows:
        print(f"{r['search']:28} {r['strategy']:10} F*={r['target']} early={r['early_decisions']!s:5} "
              f"trials {r['trials']}  trial-epochs {r['trial_epochs']:3}  reused {r['reused_trials']}  hit {r['hit']!s:5} "
              f"trials' wall {r['trials_wall_s']} s  F {r['F']}")


if __name__ == "__main__":
    main()
