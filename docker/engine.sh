# Sourced by docker/smoke.sh and docker/wheelhouse.sh: picks a container engine and the flags
# these machines need. WILDGUARD_ENGINE=podman|docker overrides the choice.
# podman facts (Debian bookworm's podman 4.3 / buildah 1.28): crun, podman's default runtime,
# fails on hosts with hybrid cgroups, runc with the cgroupfs manager works; the default
# nofile/nproc limits exceed what such hosts allow; buildah drops HEALTHCHECK unless the image
# is built in docker format.

pick_engine() {
    local wanted="${WILDGUARD_ENGINE:-}"
    if [ -z "$wanted" ]; then
        if command -v podman >/dev/null; then wanted=podman
        elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then wanted=docker
        else
            echo "no container engine: install one (apt-get install podman buildah runc) or start docker" >&2
            return 2
        fi
    fi
    ENGINE_NAME="$wanted"
    case "$wanted" in
        podman)
            ENGINE=(podman --runtime runc --cgroup-manager cgroupfs)
            BUILD_FLAGS=(--format docker --ulimit nofile=20000:20000 --ulimit nproc=32768:32768)
            RUN_FLAGS=(--ulimit nofile=20000:20000 --ulimit nproc=32768:32768) ;;
        docker)
            export DOCKER_BUILDKIT=1  # RUN --mount needs BuildKit (the default since docker 23)
            ENGINE=(docker)
            BUILD_FLAGS=()
            RUN_FLAGS=() ;;
        *) echo "WILDGUARD_ENGINE must be podman or docker, not '$wanted'" >&2; return 2 ;;
    esac
}

# The CA bundle pip should trust inside the build: the host's own (PIP_CERT, SSL_CERT_FILE, else
# Debian's bundle), so that a TLS-intercepting proxy the host trusts works in the build too.
ca_secret_flags() {
    local ca="${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
    if [ -f "$ca" ]; then echo "--secret id=pip-ca,src=$ca"; fi
}
