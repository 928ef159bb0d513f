#!/usr/bin/env bash
# Build a local stand-in for the Dockerfile's base image (python:3.11-slim-bookworm) from
# Debian's own packages, for machines that reach Debian's mirror but no container registry.
# It is tagged with the base image's name, so the Dockerfile's FROM lines resolve to it
# unchanged; a label marks it as a stand-in. Needs root, mmdebstrap and podman.
#   docker/standin-base.sh [image-name]
set -euo pipefail
cd "$(dirname "$0")/.."
source docker/engine.sh

BASE_IMAGE="${1:-docker.io/library/python:3.11-slim-bookworm}"
# Debian bookworm's python3 is 3.11, the base image's minor version: the venv paths match.
PACKAGES="python3,python3-venv,python3-pip,python-is-python3,ca-certificates"

command -v mmdebstrap >/dev/null || {
    echo "standin-base: mmdebstrap not found; install it: apt-get install -y mmdebstrap" >&2
    exit 2
}
pick_engine

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# merged-usr hook: /usr merged without the usrmerge package (and the perl it pulls in); the
# path excludes drop what the official slim images drop too (docs, man pages, locales).
mmdebstrap --quiet --variant=minbase --include="$PACKAGES" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$work/rootfs.tar" >"$work/mmdebstrap.log" 2>&1 || {
    tail -n 30 "$work/mmdebstrap.log" >&2
    echo "standin-base: mmdebstrap failed (last lines above); is Debian's mirror reachable?" >&2
    exit 1
}
"${ENGINE[@]}" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'LABEL org.wildguard-lite.standin=debian-bookworm' \
    --change 'CMD ["python3"]' \
    "$work/rootfs.tar" "$BASE_IMAGE" >/dev/null
echo "standin-base: built $BASE_IMAGE from Debian bookworm packages (stand-in, not the official image)"
