#!/usr/bin/env bash
# The local base images of this machine, for building docker/Dockerfile where no image registry is
# reachable: a Debian bookworm made with debootstrap from the mirror apt already uses, then a layer
# with Debian's Python 3.11 and this machine's CA certificates, apt and pip configuration (so that
# HTTPS to the package registries works from inside a container as it does on the host).
#
#     docker/base/build-base.sh [DEBIAN_TAG] [PYTHON_TAG]
#
# Defaults: polarsearch-local/debian:bookworm and polarsearch-local/python:3.11. An image that
# already exists is kept (delete it to rebuild). The host's settings are read here, at build time,
# into a temporary build context: none of them is written into the repository.
set -euo pipefail

debian_tag=${1:-polarsearch-local/debian:bookworm}
python_tag=${2:-polarsearch-local/python:3.11}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The first http(s) URI of a bookworm entry in apt's sources (deb822 .sources or one-line .list).
host_mirror() {
    local files
    files=$(ls /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null || true)
    [ -n "$files" ] || return 1
    # shellcheck disable=SC2086
    awk '
        /^[[:space:]]*#/ { next }
        /^URIs:/ { uri = $2 }
        /^Suites:/ && uri != "" { for (i = 2; i <= NF; i++) if ($i == "bookworm") { print uri; exit } }
        /^[[:space:]]*$/ { uri = "" }
        $1 == "deb" { for (i = 2; i < NF; i++) if ($i ~ /^https?:/ && $(i + 1) == "bookworm") { print $i; exit } }
    ' $files | head -n 1
}

if ! docker image inspect "$debian_tag" > /dev/null 2>&1; then
    mirror=$(host_mirror) || true
    if [ -z "$mirror" ]; then
        echo "build-base: no bookworm mirror found in /etc/apt/sources*" >&2
        exit 1
    fi
    echo "build-base: debootstrap --variant=minbase bookworm (the host's apt mirror) -> $debian_tag"
    root="$work/rootfs"
    nice debootstrap --variant=minbase bookworm "$root" "$mirror" > "$work/debootstrap.log" 2>&1 \
        || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import --change 'CMD ["/bin/bash"]' - "$debian_tag"
    rm -rf "$root"
fi

if ! docker image inspect "$python_tag" > /dev/null 2>&1; then
    echo "build-base: Debian's Python 3.11 with the host's CA certificates, apt and pip settings -> $python_tag"
    ctx="$work/python"
    mkdir -p "$ctx/ca" "$ctx/apt/sources.list.d" "$ctx/apt/apt.conf.d" "$ctx/pip/xdg"
    cp -L /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
    [ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$ctx/apt/"
    cp /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list "$ctx/apt/sources.list.d/" 2>/dev/null || true
    cp /etc/apt/apt.conf.d/* "$ctx/apt/apt.conf.d/" 2>/dev/null || true
    [ -f /etc/pip.conf ] && cp /etc/pip.conf "$ctx/pip/pip.conf"
    [ -d /etc/xdg/pip ] && cp -r /etc/xdg/pip/. "$ctx/pip/xdg/"
    # pip's settings from the host's environment, except those naming the host's own disk.
    env | grep '^PIP_' | grep -v -E '^PIP_(FIND_LINKS|INDEX_URL|EXTRA_INDEX_URL|NO_INDEX)=' > "$ctx/pip/env" || true
    cp "$here/Dockerfile.python" "$ctx/Dockerfile"
    sed 's/^\([^=]*\)=\(.*\)$/ENV \1="\2"/' "$ctx/pip/env" >> "$ctx/Dockerfile"
    DOCKER_BUILDKIT=0 docker build --build-arg BASE_IMAGE="$debian_tag" -t "$python_tag" "$ctx"
fi
echo "build-base: $debian_tag and $python_tag ready"
