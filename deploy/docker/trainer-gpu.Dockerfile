# syntax=docker/dockerfile:1
# mlmesh trainer, GPU variant (tensorflow[and-cuda]: CUDA and cuDNN from PyPI wheels, the node supplies only the NVIDIA driver); default command: a worker. Build from the repository root:
#   docker build -f deploy/docker/trainer-gpu.Dockerfile -t mlmesh/trainer-gpu .
# Base: python:3.11-slim pinned by digest (deploy/README.md says where the digest came from
# and how to refresh it); the build and runtime stages share it, so the venv's interpreter
# link stays valid.

FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7 AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY deploy/docker/requirements/ requirements/
RUN /opt/venv/bin/pip install --requirement requirements/trainer-gpu.txt
COPY pyproject.toml ./
COPY common/ common/
COPY trainer_svc/ trainer_svc/
# --no-deps: the requirements above are this image's whole dependency set (no TensorFlow
# where the service never imports it).
RUN /opt/venv/bin/pip install --no-deps .

FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
RUN groupadd --system --gid 10001 mlmesh \
    && useradd --system --uid 10001 --gid mlmesh --no-create-home --shell /usr/sbin/nologin mlmesh
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /usr/local/lib/mlmesh/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MLMESH_TRAINER_HOST=0.0.0.0 \
    MLMESH_TRAINER_PORT=50053 \
    MLMESH_TRAINER_METRICS_PORT=9090 \
    MLMESH_TRAINER_LOG_FORMAT=json \
    MLMESH_TRAINER_MODEL_REPO=/var/lib/mlmesh/models \
    MLMESH_TRAINER_WORK_DIR=/var/lib/mlmesh/work \
    MLMESH_WORKER_HOST=0.0.0.0 \
    MLMESH_WORKER_PORT=50054 \
    MLMESH_WORKER_METRICS_PORT=9091 \
    MLMESH_WORKER_LOG_FORMAT=json \
    MLMESH_WORKER_CACHE_DIR=/var/cache/mlmesh/worker
RUN mkdir -p /var/lib/mlmesh/models /var/lib/mlmesh/work /var/cache/mlmesh/worker && chown -R 10001:10001 /var/lib/mlmesh/models /var/lib/mlmesh/work /var/cache/mlmesh/worker
USER 10001:10001
EXPOSE 50053 50054 9090 9091
VOLUME ["/var/lib/mlmesh/models", "/var/lib/mlmesh/work", "/var/cache/mlmesh/worker"]
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/lib/mlmesh/healthcheck.py", "127.0.0.1:50054"]
CMD ["python", "-m", "trainer_svc", "worker"]
