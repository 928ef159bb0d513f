#!/usr/bin/env bash
# Fill docker/wheelhouse/ with every wheel the image needs, so that it can then be built with no
# network at all (air-gapped hosts, CI):
#   docker/wheelhouse.sh
#   podman build --format docker --network none --build-arg PIP_NO_INDEX=1 -t wildguard-lite .
# Run it where PyPI (and, for the llama-cpp-python compile, Debian's mirror) is reachable, then
# carry the folder over. Wheels for everything but llama-cpp-python are downloaded for
# CPython 3.11 on glibc <= 2.36 (the base image, Debian bookworm); llama-cpp-python is compiled
# by the Dockerfile's own `llama` stage, in the base image, and copied out of it.
set -euo pipefail
cd "$(dirname "$0")/.."
source docker/engine.sh

out=docker/wheelhouse
mkdir -p "$out"

# A clean download: no local wheel folders or extra indexes from this machine's pip config.
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL || true
platforms=()
for minor in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$out" \
    --python-version 3.11 --implementation cp "${platforms[@]}" \
    -r docker/requirements.txt -r docker/requirements-build.txt
echo "wheelhouse: $(grep -c '==' docker/requirements.txt) locked wheels and the build backend in $out"

if ls "$out"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "wheelhouse: $(basename "$out"/llama_cpp_python-*.whl) already there"
    exit 0
fi
pick_engine
tag="wildguard-lite-llama:wheelhouse"
# shellcheck disable=SC2046
nice -n 10 "${ENGINE[@]}" build "${BUILD_FLAGS[@]}" $(ca_secret_flags) --target llama -t "$tag" .
holder="$("${ENGINE[@]}" create "$tag" true)"
trap '"${ENGINE[@]}" rm -f "$holder" >/dev/null 2>&1 || true' EXIT
"${ENGINE[@]}" cp "$holder:/wheels/." "$out/"
ls "$out"/llama_cpp_python-*.whl >/dev/null 2>&1 || {
    echo "wheelhouse: the llama stage produced no llama_cpp_python wheel" >&2
    exit 1
}
echo "wheelhouse: $(basename "$out"/llama_cpp_python-*.whl) compiled in the base image"
