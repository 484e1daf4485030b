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
# Behind a mirror or a TLS-inspecting proxy every source is a build argument, the CA bundle
# a build secret (deploy/README.md, "Building behind a mirror"):
#   docker build -t ctvis-serve:cpu --build-arg VARIANT=cpu \
#     --build-arg CPU_IMAGE=registry.example.com/library/ubuntu:24.04 \
#     --build-arg PIP_INDEX_URL=https://pypi.example.com/simple \
#     --build-arg TORCH_INDEX_URL=https://pypi.example.com/pytorch/whl/cpu \
#     --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt .
#
# Checkpoints are mounted at /checkpoints (read-only) and named by CTVIS_CHECKPOINT; only the
# optional demo checkpoint is ever baked in (at /opt/ctvis/demo, the default when baked).
ARG VARIANT=gpu
# CUDA 13.0 + cuDNN 9: what the cu130 PyTorch wheels and onnxruntime-gpu>=1.23 are built for.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
# Any Debian or Ubuntu whose python3 is 3.11 or newer (Ubuntu 24.04: 3.12, Debian 12: 3.11).
ARG CPU_IMAGE=ubuntu:24.04
ARG TORCH_VERSION=2.13.0
# Where torch comes from. TORCH_INDEX_URL empty: https://download.pytorch.org/whl/<channel>,
# the variant's PyTorch index; but when TORCH_FIND_LINKS is set (a URL, or /wheels: the build
# context's deploy/wheels folder) torch comes from there and its dependencies from the
# package index, unless TORCH_INDEX_URL is set too.
ARG TORCH_INDEX_URL=""
ARG TORCH_FIND_LINKS=""
# pip's own variables for every pip run of the build (empty: not set): a PyPI mirror, more
# indexes, hosts trusted without TLS, more wheel folders or pages. A CA bundle for pip and
# downloads (a mirror's, or a TLS-inspecting proxy's) is the build secret `pip_cert`. The
# build stages that run pip import these; the runtime stage imports none of them.
ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_TRUSTED_HOST=""
ARG PIP_FIND_LINKS=""

# ---- base: OS of each variant; TORCH_CHANNEL names its PyTorch index, BUILD_EXTRAS its extra --
FROM ${CUDA_IMAGE} AS base-gpu
ENV TORCH_CHANNEL=cu130 \
    BUILD_EXTRAS=gpu

FROM ${CPU_IMAGE} AS base-cpu
ENV TORCH_CHANNEL=cpu \
    BUILD_EXTRAS=onnx

# ---- venv: Python and /opt/venv with PyTorch ----------------------------------------------
# DL3006 is a false positive: base-${VARIANT} is a stage of this file, not an image.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS venv
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
ARG TORCH_FIND_LINKS
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_FIND_LINKS
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
# Versions come with the pinned base image; apt pins would break on every Ubuntu update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev build-essential ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
# PyTorch first, from the index of the variant, so that installing the dependencies keeps
# that build instead of pulling another one from PyPI.
RUN --mount=type=secret,id=pip_cert \
    --mount=type=bind,source=deploy/wheels,target=/wheels \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/${TORCH_CHANNEL}}" \
    && if [ -z "${TORCH_INDEX_URL}" ] && [ -n "${TORCH_FIND_LINKS}" ]; then index=""; fi \
    && if [ -n "${index}" ]; then export PIP_INDEX_URL="${index}"; fi \
    && export PIP_FIND_LINKS="${PIP_FIND_LINKS} ${TORCH_FIND_LINKS}" \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}"

# ---- requirements: the dependencies' version ranges from pyproject.toml (and the extra) ----
FROM venv AS requirements
COPY pyproject.toml deploy/dependencies.py /src/
RUN python /src/dependencies.py /src/pyproject.toml "${BUILD_EXTRAS}" > /src/requirements.txt

# ---- deps: the venv with the project's dependencies, not the project -----------------------
# Keyed on the requirement list, not on pyproject.toml: editing tool settings or other
# extras keeps this layer (and the runtime stage's copy of it) cached. torch is pinned again
# so that no dependency replaces the build installed above.
FROM venv AS deps
ARG TORCH_VERSION
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_FIND_LINKS
COPY --from=requirements /src/requirements.txt /src/requirements.txt
RUN --mount=type=secret,id=pip_cert \
    --mount=type=bind,source=deploy/wheels,target=/wheels \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && pip install --no-cache-dir -r /src/requirements.txt "torch==${TORCH_VERSION}"

# ---- builder: the project's wheel (/dist) and the optional demo checkpoint ----------------
FROM deps AS builder
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_FIND_LINKS
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY service ./service
COPY training ./training
COPY cli ./cli
RUN --mount=type=secret,id=pip_cert \
    --mount=type=bind,source=deploy/wheels,target=/wheels \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && pip wheel --no-cache-dir --no-deps --wheel-dir /dist .
ARG DEMO_CHECKPOINT_URL=""
ARG DEMO_CHECKPOINT_SHA256=""
COPY deploy/fetch_checkpoint.py /src/deploy/
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export SSL_CERT_FILE=/run/secrets/pip_cert; fi \
    && mkdir -p /opt/ctvis/demo \
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
COPY --from=deps /opt/venv /opt/venv
# The project from its wheel (two small layers); the build fails when the bundled demo model
# (package data) is missing. COPY, not a bind mount from the builder stage: Buildah's cache
# of a RUN step does not look at what a mount holds, and would keep a stale project.
COPY --from=builder /dist /opt/ctvis/dist
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-index /opt/ctvis/dist/*.whl \
    && /opt/venv/bin/python -c "from model.demo import demo_checkpoint; assert demo_checkpoint()"
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
# read from PID 1's command line. (Podman keeps it only in the docker image format:
# `podman build --format docker`.)
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/opt/ctvis/healthcheck.py"]
ENTRYPOINT ["ctvis"]
CMD ["serve"]
