#!/usr/bin/env bash
# Build polarsearch's image on this machine and run it end to end (`make docker`):
#   1. the local base images (docker/base/build-base.sh: debootstrap + Debian's Python 3.11)
#   2. the project image from docker/Dockerfile over that base, and PostgreSQL's (docker/postgres)
#   3. `polarsearch --help` in the image
#   4. a smoke search in one container: the data mounted read-only, no network at all
#   5. docker/compose.yaml: Ray head + worker, MLflow server on PostgreSQL, and the driver's smoke
#      search with --ray-address head:6379; then where the trials ran, the MLflow runs, the artifact
#      store, and the Ray dashboard reached from the host
# Needs a running Docker engine and Debian's docker-compose; the sources are `git archive` of
# POLARSEARCH_REV (default HEAD), so uncommitted edits stay out of the image. Layers are cached by
# the engine: torch and the dependencies are downloaded again only when setup.cfg or
# constraints.txt change. Everything it starts is removed at the end, images excepted.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
data=$(cd "${CIFAR10_DIR:-$repo/../shared/data/cifar10}" && pwd)
rev=${POLARSEARCH_REV:-HEAD}
debian_image=polarsearch-local/debian:bookworm
python_image=polarsearch-local/python:3.11
export POLARSEARCH_IMAGE=${POLARSEARCH_IMAGE:-polarsearch:local}
export POSTGRES_IMAGE=${POSTGRES_IMAGE:-polarsearch-postgres:local}
export DOCKER_BUILDKIT=0
project=polarsearch-local-$$
work=$(mktemp -d)
started=$(date +%s)
compose=(docker-compose -p "$project" -f "$repo/docker/compose.yaml")

step() { echo "== [$(($(date +%s) - started)) s] $*"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cleanup() {
    if [ -n "${compose_up:-}" ]; then
        "${compose[@]}" down -v --remove-orphans > "$work/down.log" 2>&1 || cat "$work/down.log" >&2
    fi
    rm -rf "$work"
}
trap cleanup EXIT

docker info > /dev/null 2>&1 || { echo "run-local: no Docker engine answers (start one: dockerd &)" >&2; exit 1; }
[ -d "$data/train" ] || { echo "run-local: no CIFAR-10 tree at $data (set CIFAR10_DIR)" >&2; exit 1; }

step "local base images"
"$repo/docker/base/build-base.sh" "$debian_image" "$python_image"

step "project image $POLARSEARCH_IMAGE from $rev ($(git -C "$repo" rev-parse --short "$rev"))"
mkdir "$work/src"
git -C "$repo" archive "$rev" | tar -x -C "$work/src"
nice docker build -f "$repo/docker/Dockerfile" --build-arg BASE_IMAGE="$python_image" -t "$POLARSEARCH_IMAGE" \
    "$work/src" > "$work/build.log" 2>&1 || { tail -n 30 "$work/build.log" >&2; exit 1; }
grep -E '^Step|Using cache' "$work/build.log" | sed 's/^/   /'
step "PostgreSQL image $POSTGRES_IMAGE"
nice docker build --build-arg BASE_IMAGE="$python_image" -t "$POSTGRES_IMAGE" "$repo/docker/postgres" \
    > "$work/postgres.log" 2>&1 || { tail -n 30 "$work/postgres.log" >&2; exit 1; }
docker image ls --format '   {{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'polarsearch'

step "polarsearch --help in the image"
docker run --rm --network none "$POLARSEARCH_IMAGE" polarsearch --help > "$work/help.txt"
head -n 4 "$work/help.txt"

step "a smoke search in one container (data read-only, --network none)"
mkdir -m 777 "$work/one"
docker run --rm --network none --shm-size 2g -v "$data:/data/cifar10:ro" -v "$work/one:/work" "$POLARSEARCH_IMAGE" \
    polarsearch --preset smoke --target-flops 0.5 --delta 0.1 --max-trials 2 --skip-final \
    --data-dir /data/cifar10 --output /work/out
ls "$work/one" "$work/one/out" | sed 's/^/   /'

step "compose: Ray head + worker, MLflow server on PostgreSQL"
RAY_AUTH_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
RAY_DASHBOARD_PORT=$(free_port)
MLFLOW_PORT=$(free_port)
export RAY_AUTH_TOKEN RAY_DASHBOARD_PORT MLFLOW_PORT CIFAR10_DIR=$data
compose_up=1
"${compose[@]}" up -d --no-build head worker mlflow
for _ in $(seq 120); do
    curl -fsS -o /dev/null -H "Authorization: Bearer $RAY_AUTH_TOKEN" \
        "http://127.0.0.1:$RAY_DASHBOARD_PORT/api/version" 2> /dev/null && break
    sleep 1
done
curl -fsS -o /dev/null -H "Authorization: Bearer $RAY_AUTH_TOKEN" "http://127.0.0.1:$RAY_DASHBOARD_PORT/api/version" \
    || { "${compose[@]}" logs head >&2; echo "run-local: the Ray dashboard does not answer" >&2; exit 1; }
echo "   Ray dashboard from the host: http://127.0.0.1:$RAY_DASHBOARD_PORT/api/version without the token ->" \
    "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$RAY_DASHBOARD_PORT/api/version"), with it ->" \
    "$(curl -s -H "Authorization: Bearer $RAY_AUTH_TOKEN" "http://127.0.0.1:$RAY_DASHBOARD_PORT/api/version")"
"${compose[@]}" exec -T head python -c '
import time, ray
ray.init(address="auto", logging_level="error")
while sum(n["Alive"] for n in ray.nodes()) < 2: time.sleep(1)'
for _ in $(seq 120); do
    curl -fsS -o /dev/null "http://127.0.0.1:$MLFLOW_PORT/health" 2> /dev/null && break
    sleep 1
done
curl -fsS -o /dev/null "http://127.0.0.1:$MLFLOW_PORT/health" \
    || { "${compose[@]}" logs mlflow >&2; echo "run-local: the MLflow server does not answer" >&2; exit 1; }
echo "   MLflow server from the host: http://127.0.0.1:$MLFLOW_PORT/health ->" \
    "$(curl -s "http://127.0.0.1:$MLFLOW_PORT/health")"

step "compose: the driver's search (polarsearch --ray-address head:6379 --mlflow-uri http://mlflow:5000)"
"${compose[@]}" run --rm driver

step "compose: where the search ran, and what MLflow holds"
"${compose[@]}" exec -T head python - /work/runs/search http://mlflow:5000 compose < "$repo/docker/cluster_report.py"
echo "   MLflow's backend store (the postgres container's database mlflow, table runs):"
"${compose[@]}" exec -T postgres psql -U mlflow -d mlflow -At -F '  ' \
    -c "select run_uuid, name, status from runs order by start_time" | sed 's/^/   /'
echo "   the artifact store (the mlflow container's /work/mlartifacts, volume ${project}_artifacts):"
"${compose[@]}" exec -T mlflow find /work/mlartifacts -type f -printf '   %s bytes  %p\n'

step "done in $(($(date +%s) - started)) s; removing the compose stack"
