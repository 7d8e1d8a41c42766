# syntax=docker/dockerfile:1
# mlmesh ingest (python -m ingest_svc). Build from the repository root:
#   docker build -f deploy/docker/ingest.Dockerfile -t mlmesh/ingest .
# Base: python:3.11-slim pinned by digest (deploy/README.md says where the digest came from
# and how to refresh it); the build and runtime stages share it, so the venv's interpreter
# link stays valid.

FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7 AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY deploy/docker/requirements/ requirements/
RUN /opt/venv/bin/pip install --requirement requirements/ingest.txt
COPY pyproject.toml ./
COPY common/ common/
COPY ingest_svc/ ingest_svc/
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
    MLMESH_INGEST_HOST=0.0.0.0 \
    MLMESH_INGEST_PORT=50051 \
    MLMESH_INGEST_METRICS_PORT=9090 \
    MLMESH_INGEST_LOG_FORMAT=json \
    MLMESH_INGEST_DATA_DIR=/var/lib/mlmesh/data
RUN mkdir -p /var/lib/mlmesh/data && chown -R 10001:10001 /var/lib/mlmesh/data
USER 10001:10001
EXPOSE 50051 9090
VOLUME ["/var/lib/mlmesh/data"]
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/lib/mlmesh/healthcheck.py", "127.0.0.1:50051"]
CMD ["python", "-m", "ingest_svc"]
