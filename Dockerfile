# wildguard-lite serve: a CPU-only moderation API. The model is not in the image; mount a
# .gguf made by `wildguard-lite convert` (docs/docker.md has both ways to build, online and
# from a local wheelhouse with no network, and the smoke test):
#   docker build -t wildguard-lite .
#   docker run --rm --read-only -p 127.0.0.1:8000:8000 -v "$PWD/wildguard-gguf:/models:ro" \
#       wildguard-lite --model /models/wildguard-q4_k_m.gguf
#
# Layers, in the order they are cached: llama.cpp (compiled from docker/requirements-llama.txt
# only, so no source edit recompiles it), the locked dependencies (docker/requirements.txt),
# then the project itself (a small last layer: a code edit rebuilds in seconds).
# Behind a TLS-intercepting proxy, hand its CA bundle to pip as a build secret:
#   --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt

ARG BASE_IMAGE=python:3.11-slim-bookworm

# -- llama: llama-cpp-python as a portable wheel -------------------------------------------------
# From a prebuilt wheel in docker/wheelhouse/ when there is one (offline builds: no compiler,
# no network); otherwise compiled here. GGML_NATIVE=OFF: no -march=native, so the wheel runs
# on CPUs other than the build host's; the default target is AVX2+FMA+F16C (x86-64 CPUs since
# 2013), override CPU_FLAGS for others. GGML_OPENMP=OFF: ggml's own thread pool, so the image
# needs no libgomp (no apt-get in the runtime stage, which an offline build could not run).
FROM ${BASE_IMAGE} AS llama
ARG CPU_FLAGS="-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
ARG PIP_NO_INDEX=0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# Only the lock line and a prebuilt wheel, if any, go in: nothing else invalidates the compile.
COPY docker/requirements-llama.txt docker/wheelhouse/llama_cpp_python-*.whl /docker/
RUN --mount=type=secret,id=pip-ca \
    set -eu; \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi; \
    if ls /docker/llama_cpp_python-*.whl >/dev/null 2>&1; then \
        python -m pip download --no-index --no-deps --find-links /docker --dest /wheels \
            -r /docker/requirements-llama.txt; \
    else \
        apt-get update; \
        apt-get install -y --no-install-recommends build-essential cmake; \
        CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF ${CPU_FLAGS}" \
            python -m pip wheel --no-deps --wheel-dir /wheels -r /docker/requirements-llama.txt; \
    fi

# -- deps: the locked runtime dependencies in a venv without pip ---------------------------------
FROM ${BASE_IMAGE} AS deps
ARG PIP_NO_INDEX=0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
COPY --from=llama /wheels/ /wheels/
COPY docker/requirements.txt docker/requirements-llama.txt /docker/
COPY docker/wheelhouse/ /wheelhouse/
# The base's pip installs into the venv (--python), so the venv itself holds no pip, setuptools
# or wheel. The llama-cpp-python wheel ships each library three times (libX.so, .so.0,
# .so.0.N.N) plus headers, CMake and pkg-config files and a second lib/ folder: keep one copy
# under its SONAME (what the libraries link against), a symlink for the name Python loads.
RUN --mount=type=secret,id=pip-ca \
    set -eu; \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi; \
    python -m venv --without-pip /opt/venv; \
    python -m pip --python /opt/venv/bin/python install --no-deps --find-links /wheels \
        --find-links /wheelhouse -r /docker/requirements.txt -r /docker/requirements-llama.txt; \
    site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"; \
    rm -rf "$site/include" "$site/lib" /opt/venv/include; \
    cd "$site/llama_cpp/lib"; \
    for lib in lib*.so; do \
        soname="$(ls "$lib".? | head -n 1)"; \
        rm -f "$lib".?.*; \
        ln -sf "$soname" "$lib"; \
    done; \
    echo /opt/wildguard-lite > "$site/wildguard-lite.pth"

# -- app: the project, installed beside the venv (found through the .pth file above) -------------
FROM deps AS app
COPY docker/requirements-build.txt /docker/
COPY pyproject.toml README.md /src/
COPY wildguard_lite /src/wildguard_lite
COPY convert /src/convert
COPY benchmarks /src/benchmarks
# PIP_CONSTRAINT pins the build backend pip fetches for the project's own wheel.
RUN --mount=type=secret,id=pip-ca \
    set -eu; \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi; \
    PIP_CONSTRAINT=/docker/requirements-build.txt python -m pip --python /opt/venv/bin/python \
        install --no-deps --find-links /wheelhouse --target /opt/wildguard-lite /src

# -- runtime: the base, the venv and the project; no compilers, no pip in the venv, non-root -----
FROM ${BASE_IMAGE} AS runtime
RUN groupadd --system --gid 10001 wildguard \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin wildguard
COPY --from=deps /opt/venv /opt/venv
COPY --from=app /opt/wildguard-lite /opt/wildguard-lite
# MALLOC_ARENA_MAX=2: glibc's per-thread heaps kept hundreds of MiB after large requests
# (docs/long-inputs.md, "Memory"); serve also sets it at start-up, this covers every process.
ENV PATH=/opt/wildguard-lite/bin:/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MALLOC_ARENA_MAX=2
USER 10001:10001
VOLUME ["/models"]
EXPOSE 8000
# Inside the container the server must listen on all interfaces for -p to reach it; publish
# the port on the host's loopback (-p 127.0.0.1:8000:8000) unless you mean to expose it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
ENTRYPOINT ["wildguard-lite", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--model", "/models/model.gguf"]
