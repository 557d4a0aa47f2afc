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

FROM base AS bot
RUN pip install ".[bot]"
VOLUME ["/data"]
CMD ["kitbooth", "bot"]

FROM base AS worker
# torch first (PyPI's Linux x86_64 wheel is the CUDA build), so the worker extra finds it satisfied; the CLIP
# BPE file comes from open-clip (its own dependencies are not needed). xformers is optional: PyTorch SDPA is
# used without it. Another CUDA build: --build-arg TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cuXYZ"
ARG TORCH_VERSION=2.13.0
ARG TORCH_PIP_ARGS=""
ARG INSTALL_XFORMERS=0
RUN pip install "torch==${TORCH_VERSION}" ${TORCH_PIP_ARGS} \
 && pip install --no-deps open-clip-torch==3.3.0 \
 && pip install ".[worker]" \
 && if [ "$INSTALL_XFORMERS" = "1" ]; then pip install ".[gpu]"; fi
ENV HF_HOME=/models
VOLUME ["/data", "/models"]
CMD ["kitbooth", "worker"]
