"""Envoy bootstrap: the JSON template plus the cluster and route builders.

The static skeleton (admin, listener, HTTP filters) lives in
`gateway/envoy.template.json`. What an xDS control plane will later push (the
serving cluster and its route configuration) is built here by pure functions
returning plain dicts in Envoy's v3 JSON form, so the same dicts can become
CDS/RDS resources. Everything here is pure and thread-safe.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.core.backends import Backend

TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "envoy.template.json"
# The Lua filter giving REST clients TF Serving's error bodies ({"error": ...}).
REST_ERRORS_LUA = (Path(__file__).resolve().parent / "rest_errors.lua").read_text()
SERVING_CLUSTER = "serving"
# The same replicas balanced by consistent hashing on the idempotency key (MAGLEV),
# so duplicates of one request reach one replica, which coalesces or replays them.
SERVING_KEYED_CLUSTER = "serving_keyed"
IDEMPOTENCY_HEADER = "idempotency-key"
SERVING_SERVICE = "mlmesh.serving.v1.ServingService"
# TensorFlow Serving's own gRPC API, served by the same replicas (drop-in for its clients).
TFS_MODEL_SERVICE = "tensorflow.serving.ModelService"
TFS_SERVICES = ("tensorflow.serving.PredictionService", TFS_MODEL_SERVICE)
LISTENER_NAME = "ingress"
HTTP_STAT_PREFIX = "ingress_http"

_PLACEHOLDER = re.compile(r"^\$\{([a-z_][a-z0-9_]*)\}$")
_TYPE_PREFIX = "type.googleapis.com/"


@dataclass(frozen=True)
class HealthCheckOptions:
    service_name: str = SERVING_SERVICE
    interval_seconds: float = 1.0
    timeout_seconds: float = 1.0
    unhealthy_threshold: int = 2
    healthy_threshold: int = 1


@dataclass(frozen=True)
class OutlierOptions:
    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    base_ejection_seconds: float = 10.0
    max_ejection_percent: int = 50


@dataclass(frozen=True)
class CircuitBreakerOptions:
    max_connections: int = 10_000
    max_pending_requests: int = 10_000
    max_requests: int = 10_000
    max_retries: int = 1_000


@dataclass(frozen=True)
class ClusterOptions:
    connect_timeout_seconds: float = 1.0
    health_check: HealthCheckOptions = HealthCheckOptions()
    outlier: OutlierOptions = OutlierOptions()
    breakers: CircuitBreakerOptions = CircuitBreakerOptions()
    healthy_panic_threshold: float = 50.0
    # Keyless requests: ROUND_ROBIN, or LEAST_REQUEST (power of two choices on active
    # requests: steers around a replica that is slow for a moment, e.g. loading a version).
    lb_policy: str = "ROUND_ROBIN"


@dataclass(frozen=True)
class RetryOptions:
    retry_on: str = "unavailable,reset,connect-failure,refused-stream"
    num_retries: int = 2
    per_try_timeout_seconds: float = 0.0


def duration(seconds: float) -> str:
    """Protobuf JSON Duration: 1.0 -> '1s', 0.025 -> '0.025s'."""
    if seconds < 0:
        raise ValueError(f"duration {seconds} is negative")
    text = f"{seconds:.9f}".rstrip("0").rstrip(".")
    return f"{text}s"


def _typed(type_name: str, **fields: Any) -> dict[str, Any]:
    return {"@type": _TYPE_PREFIX + type_name, **fields}


def serving_cluster(
    backends: Sequence[Backend],
    options: ClusterOptions = ClusterOptions(),
    name: str = SERVING_CLUSTER,
    lb_policy: str = "ROUND_ROBIN",
) -> dict[str, Any]:
    """The upstream cluster of serving replicas (a v3 `Cluster`).

    HTTP/2 upstream (gRPC), round robin (or MAGLEV for the keyed cluster),
    active gRPC health checks, outlier detection and raised circuit breakers.
    IP literals give a STATIC cluster; any DNS name gives STRICT_DNS (every
    resolved address is an endpoint).
    """
    if not backends:
        raise ValueError("a cluster needs at least one backend")
    hc, od, cb = options.health_check, options.outlier, options.breakers
    return {
        "name": name,
        "type": "STATIC" if all(b.is_ip for b in backends) else "STRICT_DNS",
        "connect_timeout": duration(options.connect_timeout_seconds),
        "lb_policy": lb_policy,
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                explicit_http_config={
                    "http2_protocol_options": {
                        # Finds half-open connections to vanished replicas (no RST on a real network).
                        "connection_keepalive": {"interval": "30s", "timeout": "10s"}
                    }
                },
            )
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": b.host, "port_value": b.port}}
                            }
                        }
                        for b in backends
                    ]
                }
            ],
        },
        "health_checks": [
            {
                "timeout": duration(hc.timeout_seconds),
                "interval": duration(hc.interval_seconds),
                # Replicas get checked at the same pace before the first request arrives.
                "no_traffic_interval": duration(hc.interval_seconds),
                "unhealthy_threshold": hc.unhealthy_threshold,
                "healthy_threshold": hc.healthy_threshold,
                "grpc_health_check": {"service_name": hc.service_name},
            }
        ],
        # With xDS, a replica dropped from discovery leaves rotation even if it still passes checks.
        "ignore_health_on_host_removal": True,
        "outlier_detection": {
            "consecutive_5xx": od.consecutive_5xx,
            "consecutive_gateway_failure": od.consecutive_gateway_failure,
            # Envoy enforces gateway-failure ejection at 0% unless told otherwise.
            "enforcing_consecutive_gateway_failure": 100,
            "interval": "1s",
            "base_ejection_time": duration(od.base_ejection_seconds),
            "max_ejection_percent": od.max_ejection_percent,
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": cb.max_connections,
                    "max_pending_requests": cb.max_pending_requests,
                    "max_requests": cb.max_requests,
                    "max_retries": cb.max_retries,
                }
            ]
        },
        "common_lb_config": {"healthy_panic_threshold": {"value": options.healthy_panic_threshold}},
    }


def retry_policy(options: RetryOptions) -> dict[str, Any]:
    policy: dict[str, Any] = {
        "retry_on": options.retry_on,
        "num_retries": options.num_retries,
        # A retry goes to a replica not tried yet for this request.
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": _typed(
                    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                ),
            }
        ],
        "host_selection_retry_max_attempts": 5,
        "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.1s"},
    }
    if options.per_try_timeout_seconds > 0:
        policy["per_try_timeout"] = duration(options.per_try_timeout_seconds)
    return policy


def keyed_route(route: dict[str, Any], cluster: str = SERVING_KEYED_CLUSTER) -> dict[str, Any]:
    """The same route for requests carrying `idempotency-key`: to the MAGLEV cluster,
    hashed on the key. Put it before `route` (first match wins); requests without
    the header fall through to `route` and stay round robin."""
    match = {**route["match"], "headers": [{"name": IDEMPOTENCY_HEADER, "present_match": True}]}
    action = {
        **route["route"],
        "cluster": cluster,
        "hash_policy": [{"header": {"header_name": IDEMPOTENCY_HEADER}}],
    }
    return {"match": match, "route": action}


def serving_route_config(
    retry: RetryOptions = RetryOptions(), cluster: str = SERVING_CLUSTER, name: str = "ingress"
) -> dict[str, Any]:
    """Routes (a v3 `RouteConfiguration`): gRPC ServingService, and TF Serving's
    PredictionService and ModelService with the same route action -> cluster, /healthz -> 200.

    JSON requests reach the gRPC route after the transcoder rewrote them.
    `timeout: 0s` plus `grpc_timeout_header_max: 0s` make the client's deadline
    (grpc-timeout) the only limit, instead of Envoy's default 15 s. Requests
    with an `idempotency-key` header go to the MAGLEV cluster (`keyed_route`).
    """
    serving = {
        "match": {"prefix": f"/{SERVING_SERVICE}/", "grpc": {}},
        "route": {
            "cluster": cluster,
            "timeout": "0s",
            "max_stream_duration": {"grpc_timeout_header_max": "0s"},
            "retry_policy": retry_policy(retry),
        },
    }
    routes: list[dict[str, Any]] = [
        {
            "match": {"path": "/healthz"},
            "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
        },
        # Rewriting the model config is an admin action: on the replica's port, not the public one
        # (gRPC clients see UNIMPLEMENTED, as for a method the server lacks).
        {
            "match": {"path": f"/{TFS_MODEL_SERVICE}/HandleReloadConfigRequest"},
            "direct_response": {"status": 404},
        },
    ]
    for service in (SERVING_SERVICE, *TFS_SERVICES):
        route = {**serving, "match": {"prefix": f"/{service}/", "grpc": {}}}
        routes += [keyed_route(route), route]
    return {"name": name, "virtual_hosts": [{"name": "mlmesh", "domains": ["*"], "routes": routes}]}


def file_access_log(path: Path) -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": _typed("envoy.extensions.access_loggers.file.v3.FileAccessLog", path=str(path)),
    }


def load_template(path: Path = TEMPLATE_PATH) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read Envoy template {path}: {e}") from None


def render(template: Any, values: Mapping[str, Any]) -> Any:
    """Replace every "${name}" string with `values[name]` (any JSON type) and drop "//" keys.

    ValueError names a placeholder without a value, or a value no placeholder uses.
    """
    used: set[str] = set()

    def walk(node: Any, where: str) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, f"{where}.{k}") for k, v in node.items() if not k.startswith("//")}
        if isinstance(node, list):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(node)]
        if isinstance(node, str):
            m = _PLACEHOLDER.match(node)
            if m:
                key = m.group(1)
                if key not in values:
                    raise ValueError(f"template placeholder ${{{key}}} at {where} has no value")
                used.add(key)
                return values[key]
            if "${" in node:
                raise ValueError(
                    f"template string {node!r} at {where}: placeholders must be the whole string"
                )
        return node

    out = walk(template, "$")
    unused = sorted(set(values) - used)
    if unused:
        raise ValueError(f"values {unused} match no template placeholder")
    return out


@dataclass(frozen=True)
class BootstrapInputs:
    """Everything the template needs; ports may be 0 (Envoy picks)."""

    node_id: str
    listen_host: str
    listen_port: int
    admin_host: str
    admin_port: int
    descriptor_path: Path
    max_body_bytes: int
    backends: tuple[Backend, ...]
    cluster: ClusterOptions = ClusterOptions()
    retry: RetryOptions = RetryOptions()
    access_log_path: Path | None = None


def build_bootstrap(inputs: BootstrapInputs, template: Any | None = None) -> dict[str, Any]:
    """The full bootstrap dict, ready for `json.dumps` and `envoy -c`."""
    tpl = load_template() if template is None else template
    return render(
        tpl,
        {
            "node_id": inputs.node_id,
            "admin_host": inputs.admin_host,
            "admin_port": inputs.admin_port,
            "listen_host": inputs.listen_host,
            "listen_port": inputs.listen_port,
            "descriptor_path": str(inputs.descriptor_path),
            "max_body_bytes": inputs.max_body_bytes,
            "rest_errors_lua": REST_ERRORS_LUA,
            "access_log": [file_access_log(inputs.access_log_path)] if inputs.access_log_path else [],
            "route_config": serving_route_config(inputs.retry),
            "clusters": [
                serving_cluster(inputs.backends, inputs.cluster, lb_policy=inputs.cluster.lb_policy),
                serving_cluster(inputs.backends, inputs.cluster, SERVING_KEYED_CLUSTER, "MAGLEV"),
            ],
        },
    )
