# syntax=docker/dockerfile:1.7
# One image for both roles of ctvis-serve: `ctvis serve` (API, the default command) and
# `ctvis worker` (batch worker attached to Redis). See deploy/README.md.
#
#   docker build -t ctvis-serve:gpu .                          # CUDA runtime, CUDA PyTorch,
#                                                              # onnxruntime-gpu
#   docker build -t ctvis-serve:cpu --build-arg VARIANT=cpu .  # Ubuntu, CPU PyTorch, onnxruntime
#   docker build -t ctvis-serve:demo \
#     --build-arg DEMO_CHECKPOINT_URL=https://.../demo.tar.gz \
#     --build-arg DEMO_CHECKPOINT_SHA256=<hex> .               # bake a demo checkpoint
#
# Checkpoints are mounted at /checkpoints (read-only) and named by CTVIS_CHECKPOINT; only the
# optional demo checkpoint is ever baked in (at /opt/ctvis/demo, the default when baked).
ARG VARIANT=gpu
# CUDA 13.0 + cuDNN 9: what the cu130 PyTorch wheels and onnxruntime-gpu>=1.23 are built for.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG CPU_IMAGE=ubuntu:24.04

# ---- base: OS + Python 3.12 (Ubuntu 24.04) of each variant; ENV picks the wheels ----------
FROM ${CUDA_IMAGE} AS base-gpu
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 \
    BUILD_EXTRAS=gpu

FROM ${CPU_IMAGE} AS base-cpu
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
    BUILD_EXTRAS=onnx

# ---- builder: a virtual environment in /opt/venv (compilers stay in this stage) -----------
# DL3006 is a false positive: base-${VARIANT} is a stage of this file, not an image.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS builder
ARG TORCH_VERSION=2.13.0
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
# Versions come with the pinned base image; apt pins would break on every Ubuntu update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev build-essential ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
# PyTorch first, from the index of the variant, so that installing the project keeps that
# build instead of pulling another one from PyPI.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY service ./service
COPY training ./training
COPY cli ./cli
# The project's own dependencies carry their version ranges in pyproject.toml.
RUN pip install --no-cache-dir "./[${BUILD_EXTRAS}]" "torch==${TORCH_VERSION}"
ARG DEMO_CHECKPOINT_URL=""
ARG DEMO_CHECKPOINT_SHA256=""
COPY deploy/fetch_checkpoint.py /src/deploy/
RUN mkdir -p /opt/ctvis/demo \
    && python deploy/fetch_checkpoint.py "${DEMO_CHECKPOINT_URL}" /opt/ctvis/demo \
        --sha256 "${DEMO_CHECKPOINT_SHA256}"

# ---- runtime: Python, the venv, a non-root user; no compilers, no sources ----------------
# hadolint ignore=DL3006
FROM base-${VARIANT} AS runtime
ARG DEMO_CHECKPOINT_URL=""
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 ctvis \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin ctvis \
    && mkdir -p /checkpoints /var/lib/ctvis/jobs \
    && chown 10001:10001 /checkpoints /var/lib/ctvis/jobs
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/ctvis/demo /opt/ctvis/demo
COPY deploy/healthcheck.py /opt/ctvis/healthcheck.py
# CTVIS_CHECKPOINT is empty (the package's bundled demo model: synthetic shapes) unless a
# checkpoint was baked in from DEMO_CHECKPOINT_URL.
# /var/lib/ctvis/jobs: video jobs (mount one volume there in every API replica and worker).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CTVIS_HOST=0.0.0.0 \
    CTVIS_PORT=8000 \
    CTVIS_CHECKPOINT=${DEMO_CHECKPOINT_URL:+/opt/ctvis/demo} \
    CTVIS_JOB_DIR=/var/lib/ctvis/jobs
USER 10001:10001
WORKDIR /home/ctvis
EXPOSE 8000
# /healthz for `ctvis serve`; for `ctvis worker` (no API port) the probe asks Redis that the
# workers' group exists and this container's worker is not stuck on a batch. The role is
# read from PID 1's command line.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/opt/ctvis/healthcheck.py"]
ENTRYPOINT ["ctvis"]
CMD ["serve"]
