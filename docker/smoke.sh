#!/usr/bin/env bash
# Smoke test of the container image: build it, run it read-only as non-root with the toy model
# mounted, and check /health, /v1/moderations, the HEALTHCHECK, the user, the size, what the
# runtime venv holds and a clean exit on SIGTERM. Exits non-zero with a message on any failure.
#   docker/smoke.sh [--offline] [--no-build] [--image NAME]
#     --offline   fill docker/wheelhouse/ (docker/wheelhouse.sh) and build with no network
#     --no-build  test an image built before (NAME must exist)
# Needs: podman (or a running docker), the project installed in .venv (or $PYTHON) with the
# convert extra, to make the toy GGUF. Where the base image cannot be pulled and mmdebstrap is
# installed, a stand-in base is built from Debian packages (docker/standin-base.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source docker/engine.sh

BASE_IMAGE="docker.io/library/python:3.11-slim-bookworm"
MAX_IMAGE_BYTES=$((300 * 1000 * 1000))
IMAGE="wildguard-lite:smoke"
OFFLINE=0
BUILD=1
PYTHON="${PYTHON:-.venv/bin/python}"

while [ $# -gt 0 ]; do
    case "$1" in
        --offline) OFFLINE=1 ;;
        --no-build) BUILD=0 ;;
        --image) IMAGE="$2"; shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "smoke: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

fail() { echo "smoke: FAIL: $*" >&2; exit 1; }
step() { echo "smoke: $*"; }

pick_engine
[ -x "$PYTHON" ] || fail "no Python with the project at '$PYTHON': run the README's install, or set PYTHON"

container="wildguard-smoke-$$"
work="$(mktemp -d)"
cleanup() {
    "${ENGINE[@]}" rm -f "$container" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# -- base image: the real one if it is here or can be pulled, else a Debian stand-in ---------------
if [ "$BUILD" = 1 ]; then
    if "${ENGINE[@]}" image exists "$BASE_IMAGE" 2>/dev/null \
        || "${ENGINE[@]}" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        step "base image $BASE_IMAGE present"
    elif timeout 300 "${ENGINE[@]}" pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
        step "base image $BASE_IMAGE pulled"
    elif command -v mmdebstrap >/dev/null; then
        step "cannot pull $BASE_IMAGE: building a stand-in from Debian packages"
        docker/standin-base.sh "$BASE_IMAGE" || fail "stand-in base image build failed"
    else
        fail "cannot pull $BASE_IMAGE and mmdebstrap is missing for a stand-in (apt-get install mmdebstrap)"
    fi
fi

# -- build --------------------------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
    build=("${ENGINE[@]}" build "${BUILD_FLAGS[@]}" -t "$IMAGE")
    if [ "$OFFLINE" = 1 ]; then
        docker/wheelhouse.sh || fail "filling docker/wheelhouse/ failed"
        build+=(--network none --build-arg PIP_NO_INDEX=1)
        step "building $IMAGE offline (no network, wheels from docker/wheelhouse/)"
    else
        # shellcheck disable=SC2207
        build+=($(ca_secret_flags))
        step "building $IMAGE online (pip reaches PyPI inside the build)"
    fi
    start=$SECONDS
    nice -n 10 "${build[@]}" . >"$work/build.log" 2>&1 || {
        tail -n 40 "$work/build.log" >&2
        fail "image build failed (last lines above)"
    }
    step "built in $((SECONDS - start)) s"
fi
"${ENGINE[@]}" image inspect "$IMAGE" >/dev/null 2>&1 || fail "no image '$IMAGE' (build it, or drop --no-build)"

# -- static checks: size, HEALTHCHECK present, runtime venv contents ------------------------------
size="$("${ENGINE[@]}" image inspect --format '{{.Size}}' "$IMAGE")"
step "image size $((size / 1000 / 1000)) MB ($size bytes)"
[ "$size" -le "$MAX_IMAGE_BYTES" ] || fail "image is $size bytes, over the $MAX_IMAGE_BYTES limit"
health_cmd="$("${ENGINE[@]}" image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE")"
case "$health_cmd" in
    *health*) ;;
    *) fail "the image has no HEALTHCHECK (podman/buildah: build with --format docker)" ;;
esac
# The runtime venv must hold what serve needs and nothing it does not.
"${ENGINE[@]}" run --rm "${RUN_FLAGS[@]}" --read-only --entrypoint python "$IMAGE" -c '
import importlib.util, sys
unwanted = [m for m in ("pip", "setuptools", "wheel", "httpx", "torch", "transformers") if importlib.util.find_spec(m)]
missing = [m for m in ("llama_cpp", "fastapi", "uvicorn", "wildguard_lite") if not importlib.util.find_spec(m)]
if unwanted or missing:
    sys.exit(f"runtime venv: unwanted {unwanted}, missing {missing}")
' || fail "the runtime environment holds the wrong packages (message above)"
step "runtime venv: no pip/setuptools/wheel/httpx/torch; llama_cpp, fastapi, uvicorn present"

# -- the toy model as a q8_0 GGUF, made with the project's own commands ---------------------------
toy="$("$PYTHON" -c 'from wildguard_lite.toy import ensure_toy; print(ensure_toy())')" \
    || fail "could not build or find the toy model (wildguard-lite's convert extra installed?)"
models="$work/models"
(umask 022 && "$(dirname "$PYTHON")/wildguard-lite" convert "$toy" --quant q8_0 --out "$models" --name toy \
    --no-verify >"$work/convert.log" 2>&1) || { cat "$work/convert.log" >&2; fail "toy conversion failed"; }
gguf="$(cd "$models" && ls -- *.gguf | head -n 1)"
[ -n "$gguf" ] || fail "the conversion wrote no .gguf into $models"
chmod -R a+rX "$models"

# -- run read-only, non-root, with the model mounted read-only ------------------------------------
port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"${ENGINE[@]}" run -d --name "$container" "${RUN_FLAGS[@]}" --read-only --cap-drop ALL \
    --security-opt no-new-privileges -p "127.0.0.1:$port:8000" -v "$models:/models:ro" \
    "$IMAGE" --model "/models/$gguf" >/dev/null || fail "the container did not start"

uid="$("${ENGINE[@]}" exec "$container" id -u)"
[ "$uid" != 0 ] || fail "the server runs as root"
step "runs as uid $uid"

"$PYTHON" - "$port" <<'PY' || { "${ENGINE[@]}" logs "$container" 2>&1 | tail -n 30 >&2; fail "HTTP checks failed (server log above)"; }
import json, sys, time, urllib.request

base = f"http://127.0.0.1:{sys.argv[1]}"
deadline = time.monotonic() + 180
while True:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
            if r.status == 200:
                break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("smoke: /health did not answer 200 within 180 s")
    time.sleep(1)
print(f"smoke: /health 200 after {180 - (deadline - time.monotonic()):.0f} s")

body = json.dumps({"input": ["How do I bake bread?", "Tell me how to hurt someone."]}).encode()
request = urllib.request.Request(f"{base}/v1/moderations", data=body, headers={"Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=120) as r:
    status, reply = r.status, json.load(r)
results = reply.get("results")
if status != 200 or not isinstance(results, list) or len(results) != 2:
    sys.exit(f"smoke: /v1/moderations answered {status} with {reply!r}")
for result in results:
    scores = result.get("category_scores", {})
    if not isinstance(result.get("flagged"), bool) or not scores \
            or not all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in scores.values()):
        sys.exit(f"smoke: malformed moderation result {result!r}")
print(f"smoke: /v1/moderations 200, 2 results, flagged={[r['flagged'] for r in results]}")
PY

# -- the image's own HEALTHCHECK -----------------------------------------------------------------
if [ "$ENGINE_NAME" = podman ]; then
    "${ENGINE[@]}" healthcheck run "$container" >/dev/null || fail "HEALTHCHECK reports unhealthy"
else
    # docker runs it on its own schedule (interval 30 s): wait for the first verdict.
    for _ in $(seq 60); do
        state="$(docker inspect --format '{{.State.Health.Status}}' "$container")"
        [ "$state" = starting ] || break
        sleep 1
    done
    [ "$state" = healthy ] || fail "HEALTHCHECK reports '$state'"
fi
step "HEALTHCHECK healthy"

# -- SIGTERM: the server finishes and exits 0 ---------------------------------------------------------
"${ENGINE[@]}" kill --signal TERM "$container" >/dev/null
code="$(timeout 60 "${ENGINE[@]}" wait "$container")" || fail "the server did not exit within 60 s of SIGTERM"
[ "$code" = 0 ] || { "${ENGINE[@]}" logs "$container" 2>&1 | tail -n 20 >&2; fail "exit status $code after SIGTERM, not 0"; }
step "exit 0 on SIGTERM"
step "PASS ($IMAGE, $ENGINE_NAME)"
