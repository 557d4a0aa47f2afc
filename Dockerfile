# syntax=docker/dockerfile:1
# Two images from one file: `bot` (small, no torch) and `worker` (CUDA torch, SD 1.5 resident).
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY kitbooth ./kitbooth
COPY storage ./storage
COPY training ./training
COPY gpu_worker ./gpu_worker
COPY bot ./bot
COPY benchmarks ./benchmarks
# The one install recipe: the test command builds its per-process venvs with it too (scripts/test-processes).
COPY scripts/install-process ./scripts/install-process
# Both images run as this non-root user; the volumes' mount points belong to it (a new named volume copies that).
RUN useradd --create-home --uid 10001 kitbooth && mkdir -p /data /models && chown kitbooth:kitbooth /data /models

FROM base AS bot
RUN sh scripts/install-process bot
USER kitbooth
VOLUME ["/data"]
CMD ["kitbooth", "bot"]

FROM base AS worker
# The recipe installs torch first (PyPI's Linux x86_64 wheel is the CUDA build), so the worker extra finds it
# satisfied, then open-clip without its dependencies (only its CLIP BPE file is used). The test command runs
# the same recipe with TORCH_SPEC=torch==2.13.0+cpu. xformers is optional (INSTALL_XFORMERS=1): PyTorch SDPA is
# used without it. Another CUDA build: --build-arg TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cuXYZ"
ARG TORCH_VERSION=2.13.0
ARG TORCH_PIP_ARGS=""
ARG INSTALL_XFORMERS=0
RUN TORCH_SPEC="torch==${TORCH_VERSION}" sh scripts/install-process worker
ENV HF_HOME=/models
USER kitbooth
VOLUME ["/data", "/models"]
CMD ["kitbooth", "worker"]
