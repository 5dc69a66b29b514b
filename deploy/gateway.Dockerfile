# infergate gateway image: only the serving dependencies (the base deps of pyproject.toml).
# Converters' heavy deps (torch, keras, scikit-learn, TensorRT) are extras and never installed here;
# TensorRT plans are built by the `converter` compose service inside NVIDIA's TensorRT container.
# Build from the repository root:  docker build -f deploy/gateway.Dockerfile -t infergate/gateway .
# (`make images`). No `# syntax=` line: BuildKit would pull that frontend from Docker Hub.
# Offline (no registry, or no PyPI from inside containers): PYTHON_IMAGE = a local base image and
# --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels install from the wheelhouse that
# deploy/offline/wheelhouse.py puts in deploy/wheels/ on the host (`make images OFFLINE=1`).

ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm

# ---- build stage: resolve and install wheels into a relocatable virtualenv ----------------------
FROM ${PYTHON_IMAGE} AS builder
# pip reads its options from PIP_* variables; empty (the default) = PyPI as usual
ARG PIP_NO_INDEX=""
ARG PIP_FIND_LINKS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
COPY converters/ converters/
COPY loadtest/ loadtest/
COPY deploy/wheels/ /wheels/
# `.` = base dependencies only; fail the build if anything dragged torch in transitively.
RUN pip install --no-cache-dir . \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"

# ---- runtime stage: no compilers, no sources, no pip cache, non-root ----------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="infergate-gateway" \
      org.opencontainers.image.description="KServe v2 gateway: batching, Redis cache, ONNX Runtime or Triton backends" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 infergate \
    && useradd --system --uid 10001 --gid infergate --home-dir /tmp --shell /usr/sbin/nologin infergate
COPY --from=builder /opt/venv /opt/venv
COPY deploy/healthcheck.py /usr/local/bin/infergate-healthcheck
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    INFERGATE_MODEL_REPO=/models \
    INFERGATE_WORKERS=auto
WORKDIR /tmp
USER 10001:10001
# 8000 = HTTP/REST (+ /metrics), 8001 = gRPC. INFERGATE_WORKERS=auto: front-end workers sized from
# the container's CPU limit (cgroup quota, v2 or v1): one per core but one (the executor's), at
# most 8; below 3 cores one process.
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/bin/infergate-healthcheck"]
ENTRYPOINT ["infergate"]
CMD ["serve", "--model-repo", "/models", "--host", "0.0.0.0", "--http-port", "8000", "--grpc-port", "8001"]
