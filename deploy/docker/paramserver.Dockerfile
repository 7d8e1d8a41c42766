# syntax=docker/dockerfile:1
# mlmesh parameter-server shard (python -m paramserver_svc; MLMESH_PS_SHARD_INDEX and MLMESH_PS_NUM_SHARDS come from the deployment). Build from the repository root:
#   docker build -f deploy/docker/paramserver.Dockerfile -t mlmesh/paramserver .
# Base: python:3.11-slim pinned by digest (deploy/README.md says where the digest came from
# and how to refresh it); the build and runtime stages share it, so the venv's interpreter
# link stays valid.

FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7 AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY deploy/docker/requirements/ requirements/
RUN /opt/venv/bin/pip install --requirement requirements/paramserver.txt
COPY pyproject.toml ./
COPY common/ common/
COPY paramserver_svc/ paramserver_svc/
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
    MLMESH_PS_HOST=0.0.0.0 \
    MLMESH_PS_PORT=50052 \
    MLMESH_PS_METRICS_PORT=9090 \
    MLMESH_PS_LOG_FORMAT=json \
    MLMESH_PS_CHECKPOINT_DIR=/var/lib/mlmesh/checkpoints
RUN mkdir -p /var/lib/mlmesh/checkpoints && chown -R 10001:10001 /var/lib/mlmesh/checkpoints
USER 10001:10001
EXPOSE 50052 9090
VOLUME ["/var/lib/mlmesh/checkpoints"]
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/lib/mlmesh/healthcheck.py", "127.0.0.1:50052"]
CMD ["python", "-m", "paramserver_svc"]
