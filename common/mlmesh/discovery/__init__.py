"""Service discovery: where the instances of each mlmesh service are, and which are healthy.

One interface (`Registry`), three backends chosen by URL (`open_registry`):

- `file:///DIR` — the embedded default for one machine: each instance writes a
  record under DIR on start and removes it on stop; watchers check liveness with
  `grpc.health.v1`, so a `kill -9`'d instance turns unhealthy instead of being
  trusted forever;
- `consul://HOST:PORT` — Consul's HTTP API (register with a gRPC check, watch
  `/v1/health/service/<name>?passing` with blocking queries);
- `static:NAME=HOST:PORT,HOST:PORT;NAME=...` — fixed addresses (Kubernetes DNS
  names, `<TARGET>_ADDR` settings); always considered healthy.
"""

from mlmesh.discovery.base import Instance, Registry, RegistryError, open_registry

__all__ = ["Instance", "Registry", "RegistryError", "open_registry"]
