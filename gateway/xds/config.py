"""The declarative gateway configuration (YAML) and the control plane's settings.

A `GatewayConfig` says which listeners Envoy has, which routes each carries and
which clusters (registry services) they reach, with their balancing, health and
retry policies and the listeners' limits. It is validated whole at load: an
unknown field, a duplicate route, a bad duration or a route to an undefined
cluster is a `ConfigError` naming the file, the field path and the reason, and
nothing is pushed to Envoy. Secrets never live in the file: the admin bearer
token comes from `XdsSettings.admin_token` (env `MLMESH_XDS_ADMIN_TOKEN`).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from mlmesh.settings import DEFAULT_MAX_MESSAGE_BYTES, ServiceSettings
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import SettingsConfigDict

from gateway.config import RETRY_CONDITIONS

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "gateway.yaml"

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")
_GRPC_SERVICE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_GRPC_METHOD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# RFC 6750 b64token characters: safe to embed in Envoy config strings unquoted.
_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]{16,256}$")


class ConfigError(ValueError):
    """A gateway config that cannot be used; the message names the file, field and reason."""


def parse_duration(value: object) -> float:
    """'250ms', '1s', '1.5s', '2m', '1h' (or a number of seconds) -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value).strip())
        if not m:
            raise ValueError(
                f"invalid duration {value!r}: expected a number with unit ms, s, m or h (e.g. '250ms', '1s')"
            )
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if seconds < 0:
        raise ValueError(f"invalid duration {value!r}: negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
Name = Annotated[str, Field(pattern=_NAME.pattern)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimit(Strict):
    """A token bucket: `requests` per `per`, bursts up to `burst` (default `requests`)."""

    requests: int = Field(..., ge=1, le=10_000_000, description="Tokens added every `per`.")
    per: Duration = Field(1.0, description="Refill interval (Envoy needs >= 50ms).")
    burst: int | None = Field(None, ge=1, le=10_000_000, description="Bucket size; default `requests`.")

    @field_validator("per")
    @classmethod
    def _min_interval(cls, v: float) -> float:
        if v < 0.05:
            raise ValueError(f"rate limit interval {v}s is below Envoy's minimum of 50ms")
        return v


class Limits(Strict):
    max_body_bytes: int = Field(
        DEFAULT_MAX_MESSAGE_BYTES,
        ge=1024,
        le=1 << 30,
        description="Largest transcoded JSON request/response body (over it: 413 / 500).",
    )
    rate_limit: RateLimit | None = Field(None, description="Local rate limit of the whole listener.")


class Match(Strict):
    """Either a gRPC service (optionally some of its methods) or an HTTP path."""

    grpc_service: str | None = Field(None, description="Full proto service name, e.g. pkg.v1.Service.")
    methods: tuple[str, ...] = Field((), description="Only these methods of grpc_service (default: all).")
    path: str | None = Field(None, description="Exact HTTP path.")
    prefix: str | None = Field(None, description="HTTP path prefix.")

    @model_validator(mode="after")
    def _one_kind(self) -> Match:
        given = [k for k in ("grpc_service", "path", "prefix") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a match needs exactly one of grpc_service, path, prefix; got {given or 'none'}"
            )
        if self.grpc_service is not None:
            if not _GRPC_SERVICE.match(self.grpc_service):
                raise ValueError(f"grpc_service {self.grpc_service!r} is not a full proto service name")
            bad = [m for m in self.methods if not _GRPC_METHOD.match(m)]
            if bad or len(set(self.methods)) != len(self.methods):
                raise ValueError(f"methods {list(self.methods)} must be distinct method names")
        elif self.methods:
            raise ValueError("methods only apply to a grpc_service match")
        for p in (self.path, self.prefix):
            if p is not None and not p.startswith("/"):
                raise ValueError(f"HTTP path {p!r} must start with '/'")
        return self

    def paths(self) -> list[tuple[str, str, bool]]:
        """(kind, value, grpc) triples: kind 'path' (exact) or 'prefix'."""
        if self.grpc_service is not None:
            if self.methods:
                return [("path", f"/{self.grpc_service}/{m}", True) for m in self.methods]
            return [("prefix", f"/{self.grpc_service}/", True)]
        if self.path is not None:
            return [("path", self.path, False)]
        return [("prefix", str(self.prefix), False)]


class Route(Strict):
    name: Name
    kind: Literal["prediction", "status", "admin"] = Field(
        ...,
        description="prediction: hashed on idempotency-key (MAGLEV) when the header is present; "
        "status: read-only; admin: internal listeners only, bearer token required.",
    )
    match: Match
    cluster: Name | None = Field(None, description="Target cluster (a `clusters` entry).")
    direct_response: str | None = Field(None, description="Answer 200 with this body (no cluster).")
    timeout: Duration = Field(0.0, description="Route timeout; 0 = only the client's deadline.")
    retry_on: tuple[str, ...] | None = Field(None, description="Override the cluster's retry conditions.")
    rate_limit: RateLimit | None = Field(None, description="Local rate limit of this route alone.")

    @model_validator(mode="after")
    def _target(self) -> Route:
        if (self.cluster is None) == (self.direct_response is None):
            raise ValueError("a route needs exactly one of cluster, direct_response")
        if self.retry_on is not None:
            _check_retry_on(self.retry_on)
        return self


class Listener(Strict):
    name: Name
    kind: Literal["public", "internal"]
    address: str = Field("127.0.0.1", description="Bind address (an IP literal).")
    port: int = Field(0, ge=0, le=65535, description="0 = a free port (the launcher may override).")
    json_services: tuple[str, ...] = Field(
        (), description="gRPC services whose google.api.http bindings are transcoded from JSON."
    )
    limits: Limits = Limits()
    routes: tuple[Route, ...] = Field(..., min_length=1)

    @field_validator("address")
    @classmethod
    def _ip(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"address {v!r} is not an IP literal") from None
        return v

    @model_validator(mode="after")
    def _routes(self) -> Listener:
        seen: dict[tuple[str, str, bool], str] = {}
        for r in self.routes:
            if r.kind == "admin" and self.kind != "internal":
                raise ValueError(f"route {r.name!r} is an admin route on {self.kind} listener {self.name!r}")
            if self.kind == "internal" and r.kind != "admin":
                raise ValueError(f"internal listener {self.name!r} carries only admin routes, not {r.name!r}")
            for key in r.match.paths():
                if key in seen:
                    raise ValueError(f"routes {seen[key]!r} and {r.name!r} both match {key[0]} {key[1]!r}")
                seen[key] = r.name
        return self


class HealthCheck(Strict):
    service_name: str = Field(..., min_length=1, description="grpc.health.v1 name the backends report.")
    interval: Duration = 1.0
    timeout: Duration = 1.0
    unhealthy_threshold: int = Field(2, ge=1, le=100)
    healthy_threshold: int = Field(1, ge=1, le=100)

    @model_validator(mode="after")
    def _timeout(self) -> HealthCheck:
        if self.interval <= 0 or self.timeout <= 0:
            raise ValueError("health check interval and timeout must be positive")
        if self.timeout > self.interval:
            raise ValueError(f"health check timeout {self.timeout}s exceeds its interval {self.interval}s")
        return self


class Outlier(Strict):
    consecutive_5xx: int = Field(5, ge=1, le=1000)
    consecutive_gateway_failure: int = Field(5, ge=1, le=1000)
    base_ejection_time: Duration = 10.0
    max_ejection_percent: int = Field(50, ge=0, le=100)


class Retry(Strict):
    retry_on: tuple[str, ...] = ("unavailable", "reset", "connect-failure", "refused-stream")
    num_retries: int = Field(2, ge=0, le=10, description="Per request, each to a host not tried yet.")
    per_try_timeout: Duration = Field(0.0, description="0 = none (the client's deadline bounds all).")
    budget_percent: float = Field(
        25.0, gt=0, le=100, description="Retries in flight as % of active requests (retry budget)."
    )
    min_retry_concurrency: int = Field(10, ge=1, le=100_000, description="Retries always allowed.")

    @field_validator("retry_on")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _check_retry_on(v)


def _check_retry_on(v: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [c for c in v if c not in RETRY_CONDITIONS]
    if unknown or not v:
        raise ValueError(f"unknown retry conditions {unknown}; expected some of {sorted(RETRY_CONDITIONS)}")
    return v


class Cluster(Strict):
    name: Name
    service: Name = Field(..., description="The registry service whose healthy instances are endpoints.")
    lb_policy: Literal["LEAST_REQUEST", "ROUND_ROBIN", "RANDOM"] = "LEAST_REQUEST"
    connect_timeout: Duration = 1.0
    health_check: HealthCheck
    outlier: Outlier = Outlier()
    retry: Retry = Retry()
    healthy_panic_threshold: float = Field(50.0, ge=0, le=100)
    max_requests: int = Field(10_000, ge=1, le=1_000_000, description="Circuit breaker.")


class GatewayConfig(Strict):
    listeners: tuple[Listener, ...] = Field(..., min_length=1)
    clusters: tuple[Cluster, ...] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        for kind, names in (
            ("listener", [x.name for x in self.listeners]),
            ("cluster", [c.name for c in self.clusters]),
            ("route", [r.name for x in self.listeners for r in x.routes]),
        ):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"duplicate {kind} names {dup}")
        clusters = {c.name for c in self.clusters}
        for x in self.listeners:
            for r in x.routes:
                if r.cluster is not None and r.cluster not in clusters:
                    raise ValueError(f"route {r.name!r} targets undefined cluster {r.cluster!r}")
        keyed = {f"{c}_keyed" for c in self.keyed_clusters()}
        if keyed & clusters:
            raise ValueError(f"cluster names {sorted(keyed & clusters)} are reserved for keyed twins")
        return self

    def keyed_clusters(self) -> set[str]:
        """Clusters that prediction routes reach: each gets a MAGLEV twin `<name>_keyed`."""
        return {r.cluster for x in self.listeners for r in x.routes if r.kind == "prediction" and r.cluster}

    def cluster(self, name: str) -> Cluster:
        return next(c for c in self.clusters if c.name == name)


def _where(loc: tuple[int | str, ...], data: object) -> str:
    """'listeners[0].routes[2].timeout', naming list items by their `name` when they have one."""
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            item = node[part] if isinstance(node, list) and part < len(node) else None
            name = item.get("name") if isinstance(item, dict) else None
            out += f"[{part}]" + (f"({name})" if name else "")
            node = item
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


def parse_config(data: object, source: str = "<config>") -> GatewayConfig:
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            # Pydantic adds validator names ("function-after[...]") to some locations; drop them.
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown field {loc[-1]!r}"
            lines.append(f"{source}: {_where(loc, data)}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def load_config(path: Path) -> GatewayConfig:
    """Read and validate a gateway YAML file; ConfigError names the file, field path and reason."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: (top level): expected a mapping, got {type(data).__name__}")
    return parse_config(data, str(path))


class XdsSettings(ServiceSettings):
    """`python -m gateway.xds`: the ADS server's own port is `--port`; Envoy's listeners are in the config."""

    model_config = SettingsConfigDict(env_prefix="MLMESH_XDS_", extra="forbid", validate_default=True)

    config: Path = Field(DEFAULT_CONFIG_PATH, description="The gateway YAML (listeners, routes, clusters).")
    registry: str = Field(
        ...,
        min_length=1,
        description="Where endpoints come from: file:///DIR, consul://H:P, static:NAME=A,...",
    )
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token admin routes require (never in the config file). Unset: every admin "
        "request is refused with 401 / UNAUTHENTICATED.",
    )
    grace_seconds: float = Field(1.0, ge=0, le=300, description="On SIGTERM: time before streams are cut.")
    drain_seconds: float = Field(0.0, ge=0, le=60, description="On SIGTERM: NOT_SERVING before stopping.")

    @field_validator("admin_token")
    @classmethod
    def _token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not _TOKEN.match(v.get_secret_value()):
            raise ValueError("admin token must be 16-256 characters of A-Z a-z 0-9 . _ ~ + / = -")
        return v
