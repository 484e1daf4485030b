# syntax=docker/dockerfile:1.7
# Serve image for ctvis-serve. Build the GPU variant (default) or the CPU one:
#   docker build -t ctvis-serve .                       # CUDA runtime + CUDA PyTorch
#   docker build -t ctvis-serve:cpu --build-arg VARIANT=cpu .
# Checkpoints are mounted at /checkpoints, not baked in.
ARG VARIANT=gpu

FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 AS base-gpu
ARG TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124"
ARG EXTRAS="gpu"

FROM python:3.11-slim-bookworm AS base-cpu
ARG TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cpu"
ARG EXTRAS="onnx"

FROM base-${VARIANT} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DEBIAN_FRONTEND=noninteractive VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip curl \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
WORKDIR /app
# PyTorch first, from the index matching the variant, so the project install keeps it.
RUN pip install ${TORCH_SPEC}
COPY pyproject.toml README.md ./
COPY model ./model
COPY service ./service
COPY training ./training
COPY cli ./cli
RUN pip install ".[${EXTRAS}]"
RUN useradd --create-home --uid 10001 ctvis && mkdir -p /checkpoints && chown ctvis /checkpoints
USER ctvis
ENV CTVIS_HOST=0.0.0.0 CTVIS_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
ENTRYPOINT ["ctvis"]
CMD ["serve"]
