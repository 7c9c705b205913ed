"""Where a compose search ran and what it left: run inside the head container (docker/run-local.sh).

Prints the Ray nodes, each trial of the search with the node that ran it (the Ray actor with the
trial's pid on the trial's node_ip, from Tune's result.json), the Ray tasks outside Tune (the final
job), and, from the MLflow server's REST API, the experiment's runs and its logged models with the
files the server's artifact store holds for them.

    python cluster_report.py OUTPUT MLFLOW_URI EXPERIMENT
"""

import json
import sys
import urllib.request
from pathlib import Path

from ray.util.state import list_actors, list_nodes, list_tasks

OUTPUT, MLFLOW, EXPERIMENT = Path(sys.argv[1]), sys.argv[2], sys.argv[3]

nodes = {n.node_id: n for n in list_nodes(detail=True)}
print("Ray nodes:")
for n in nodes.values():
    print(f"  {n.node_id}  {n.node_name:6}  ip={n.node_ip}  CPU={n.resources_total.get('CPU', 0):g}  {n.state}")

actor_node = {(nodes[a.node_id].node_ip, a.pid): a.node_id for a in list_actors(detail=True, limit=10000)
              if a.node_id in nodes and a.pid}
print("trials (Tune's result.json; node from Ray's actors):")
for path in sorted((OUTPUT / "ray").rglob("result.json")):
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    last = rows[-1]
    node = actor_node.get((last["node_ip"], last["pid"]), "?")
    name = nodes[node].node_name if node in nodes else "?"
    print(f"  {last['trial_id']}  node={node} ({name})  hostname={last['hostname']}  ip={last['node_ip']}"
          f"  pid={last['pid']}  reports={len(rows)}  F={last.get('flops_reduction')}")
print("Ray tasks outside Tune:")
for t in list_tasks(detail=True, limit=10000):
    if t.type == "NORMAL_TASK":
        print(f"  {t.name}  node={t.node_id} ({nodes[t.node_id].node_name if t.node_id in nodes else '?'})  {t.state}")


def api(path, body=None):
    request = urllib.request.Request(f"{MLFLOW}/api/2.0/{path}", data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


experiment = api(f"mlflow/experiments/get-by-name?experiment_name={EXPERIMENT}")["experiment"]
print(f"MLflow experiment {EXPERIMENT!r} ({experiment['artifact_location']}):")
runs = api("mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
final = None
for run in sorted(runs, key=lambda r: r["info"]["start_time"]):
    tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
    params = {p["key"]: p["value"] for p in run["data"].get("params", [])}
    kind = tags.get("polarsearch.kind", "?")
    final = run if kind == "final" else final
    extra = f"lam={params.get('lam')} t={params.get('t')}" if "lam" in params else ""
    print(f"  {run['info']['run_id']}  {kind:6}  {run['info']['status']:8}  {run['info'].get('run_name', '')}  {extra}")


def listing(path):
    """The files under `path` of the server's artifact store (its mlflow-artifacts proxy)."""
    for f in api(f"mlflow-artifacts/artifacts?path={path}").get("files", []):
        if f["is_dir"]:
            yield from listing(f"{path}/{f['path']}")
        else:
            yield f"{path}/{f['path']}", int(f.get("file_size", 0))


models = api("mlflow/logged-models/search", {"experiment_ids": [experiment["experiment_id"]]}).get("models", [])
for model in models:
    info = model["info"]
    source = "the final run" if final and info.get("source_run_id") == final["info"]["run_id"] else "run"
    print(f"logged model {info['model_id']} {info.get('name', '')!r} from {source} {info.get('source_run_id')}:"
          f" {info['artifact_uri']}")
    for path, size in listing(info["artifact_uri"].removeprefix("mlflow-artifacts:/")):
        print(f"  {path}  {size} bytes")
if not models:
    print("no logged model")
