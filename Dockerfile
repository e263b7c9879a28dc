# loraplane: one image for every component. The entrypoint is the `loraplane` console script, so
# the Kubernetes manifests (helm/loraplane) pick the component with `args`:
#   loraplane gateway   Tinker gateway, :8000 (GET /healthz, /metrics)
#   loraplane operator  Kopf operator, liveness :8080/healthz, metrics :9090/metrics
#   loraplane runtime   GPU runtime, :8001 (GET /healthz liveness, /readyz readiness, /metrics)
#
# BASE_IMAGE is a CUDA-capable PyTorch image by default, because the runtime needs one; the venv is
# created with --system-site-packages so the base image's CUDA build of torch is used as is. A slim
# Python base works for the gateway and the operator; then set TORCH_SPEC (e.g. "torch==2.13.0")
# and, for a CPU-only torch, point pip at a CPU wheel (PIP_INDEX_URL / PIP_FIND_LINKS); PyPI's
# Linux torch is the CUDA build. scripts/image-smoke.sh builds on a plain Debian base this way.
# No model weights, API keys or credentials are baked in: models come from volumes (see the chart).
ARG BASE_IMAGE=pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime

FROM ${BASE_IMAGE} AS build
# Optional torch requirement installed before loraplane; empty keeps the base image's torch.
ARG TORCH_SPEC=""
# Build-time pip settings for mirrors and TLS-intercepting proxies; they stay in this stage. They
# have no defaults on purpose: an ARG without a value stays unset, so pip keeps its own defaults.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
# Extras of the loraplane package to install: "s3" lets the artifact store be s3:// (the chart's
# store.type=s3); empty leaves it out.
ARG EXTRAS="s3"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python3 -m venv --system-site-packages /opt/loraplane
ENV PATH=/opt/loraplane/bin:$PATH
WORKDIR /src
# Three layers, from the slowest-changing: torch, then the dependencies listed in pyproject.toml,
# then loraplane itself (--no-deps), so that a code change rebuilds only the last, small layer.
RUN if [ -n "$TORCH_SPEC" ]; then pip install "$TORCH_SPEC"; fi
COPY pyproject.toml ./
RUN python -c 'import os, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
extras = [e.strip() for e in os.environ.get("EXTRAS", "").split(",") if e.strip()]; \
print("\n".join(p["dependencies"] + [r for e in extras for r in p["optional-dependencies"][e]]))' \
    > /tmp/requirements.txt \
    && pip install --requirement /tmp/requirements.txt
# README.md is optional at build time: the glob matches nothing when it is absent (a COPY needs one
# source that exists, hence pyproject.toml again), and pyproject.toml names it as the long
# description, so an empty one stands in.
COPY pyproject.toml README.m[d] ./
COPY loraplane ./loraplane
RUN if [ ! -f README.md ]; then : > README.md; fi \
    && pip install --no-deps ".${EXTRAS:+[$EXTRAS]}" \
    && python -c "import loraplane, torch; print('loraplane', loraplane.__version__, 'torch', torch.__version__)"

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="loraplane" \
      org.opencontainers.image.description="Self-hosted multi-tenant LoRA fine-tuning that speaks the Tinker API" \
      org.opencontainers.image.licenses="Apache-2.0"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 loraplane \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/loraplane --create-home \
       --shell /usr/sbin/nologin loraplane
COPY --from=build /opt/loraplane /opt/loraplane
# Caches point into /tmp so the container runs with a read-only root filesystem (the chart mounts an
# emptyDir there). The hub is offline: base models come from a volume, never from a download.
ENV PATH=/opt/loraplane/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/loraplane \
    XDG_CACHE_HOME=/tmp/cache \
    HF_HOME=/tmp/cache/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TRITON_CACHE_DIR=/tmp/cache/triton
USER 10001:10001
WORKDIR /home/loraplane
EXPOSE 8000 8001 8080 9090
# Probes whichever component runs here: gateway :8000, runtime :8001 and operator :8080 all serve
# /healthz. Kubernetes ignores HEALTHCHECK; the chart declares its own probes per component.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request as u\nfor p in (8000, 8001, 8080):\n    try:\n        u.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=2); sys.exit(0)\n    except Exception: pass\nsys.exit(1)"]
ENTRYPOINT ["loraplane"]
CMD ["--help"]
