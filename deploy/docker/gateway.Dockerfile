# syntax=docker/dockerfile:1
# mlmesh gateway: Envoy launcher (python -m gateway, needs MLMESH_GATEWAY_XDS_ADDR) and, with the command python -m gateway.xds, its xDS control plane (needs MLMESH_XDS_REGISTRY). Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t mlmesh/gateway .
# Base: python:3.11-slim pinned by digest (deploy/README.md says where the digest came from
# and how to refresh it); the build and runtime stages share it, so the venv's interpreter
# link stays valid.

FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7 AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY deploy/docker/requirements/ requirements/
RUN /opt/venv/bin/pip install --requirement requirements/gateway.txt
COPY pyproject.toml ./
COPY common/ common/
COPY gateway/ gateway/
COPY deploy/docker/gateway.yaml /etc/mlmesh/gateway.yaml
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
    MLMESH_GATEWAY_HOST=0.0.0.0 \
    MLMESH_GATEWAY_PORT=8080 \
    MLMESH_GATEWAY_INTERNAL_PORT=8081 \
    MLMESH_GATEWAY_ADMIN_PORT=9901 \
    MLMESH_GATEWAY_LOG_FORMAT=json \
    MLMESH_GATEWAY_WORK_DIR=/var/run/mlmesh/gateway \
    MLMESH_XDS_HOST=0.0.0.0 \
    MLMESH_XDS_PORT=18000 \
    MLMESH_XDS_METRICS_PORT=9090 \
    MLMESH_XDS_LOG_FORMAT=json \
    MLMESH_XDS_CONFIG=/etc/mlmesh/gateway.yaml
RUN mkdir -p /var/run/mlmesh/gateway && chown -R 10001:10001 /var/run/mlmesh/gateway
USER 10001:10001
EXPOSE 8080 8081 9901 18000 9090
VOLUME ["/var/run/mlmesh/gateway"]
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/lib/mlmesh/healthcheck.py", "http://127.0.0.1:8080/healthz"]
CMD ["python", "-m", "gateway"]
