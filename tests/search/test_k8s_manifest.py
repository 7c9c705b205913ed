"""docker/k8s/rayjob.yaml: a KubeRay RayJob whose entrypoint is a valid polarsearch command line.

No Kubernetes here: the manifest is read as data and its entrypoint parsed by polarsearch's own
parser and config loader, as the container would run it (Ray gives the entrypoint RAY_ADDRESS).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import ray
import yaml

from search.cli import search_parser
from search.inputs import config_of

MANIFEST = Path(__file__).resolve().parents[2] / "docker" / "k8s" / "rayjob.yaml"


def _job() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def _pods(job: dict) -> list[dict]:
    cluster = job["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]


def test_rayjob_runs_the_image_with_token_auth_and_this_ray():
    job = _job()
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__ and cluster["authOptions"] == {"mode": "token"}
    images = {c["image"] for pod in _pods(job) for c in pod["containers"]}
    assert len(images) == 1 and next(iter(images)).startswith("polarsearch")
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # trials go to the workers


def test_rayjob_entrypoint_is_a_polarsearch_command_line(cifar10_dir):
    job = _job()
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "polarsearch"
    args = search_parser().parse_args(argv[1:])
    assert args.ray_address == "$RAY_ADDRESS"  # the cluster the job runs in, not an embedded Ray
    assert args.mlflow_uri.startswith("http://") and not args.resume

    # The data and output folders are on the volumes every Ray pod mounts (data read-only).
    for pod in _pods(job):
        (container,) = pod["containers"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts[str(args.data_dir)].get("readOnly") is True
        assert any(Path(path) in args.output.parents for path in mounts)

    # The preset, the overrides and the data as the image would load them (the tree mounted here).
    args.data_dir = cifar10_dir
    config = config_of(args)
    assert config.dataset == "cifar10" and config.model == "resnet56"
