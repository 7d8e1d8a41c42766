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

Services register themselves when started with `--registry URL` (`run_service`,
`mlmesh.discovery.announce`): once SERVING, and they deregister first thing on
SIGTERM, before NOT_SERVING. Registry service names (`announce.REGISTRY_NAMES`):

    ingest_svc                -> ingest
    paramserver_svc (shards)  -> paramserver     meta["shard"] = shard index, meta["num_shards"]
    trainer_svc coordinator   -> trainer
    trainer_svc worker        -> trainer-worker  meta["worker_id"]
    serving_svc               -> serving

Every instance also carries meta["metrics_port"]; its health is checked on its first
proto service (e.g. `mlmesh.serving.v1.ServingService`), which turns NOT_SERVING on drain.
"""

from mlmesh.discovery.base import Instance, Registry, RegistryError, open_registry

__all__ = ["Instance", "Registry", "RegistryError", "open_registry"]
