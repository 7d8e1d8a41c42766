"""Settings shared by every service, and the one way to load them.

Each service subclasses `ServiceSettings` in its `config.py` with its own env
prefix (`MLMESH_INGEST_`, ...). Values come from flags (`--data-dir`), then
the environment, then defaults; a bad value stops the process with a message
naming the setting, before anything starts.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlmesh.discovery.base import RegistryError, check_registry_url

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class ServiceSettings(BaseSettings):
    """What every mlmesh gRPC server needs."""

    model_config = SettingsConfigDict(extra="forbid", validate_default=True)

    host: str = Field("127.0.0.1", description="Address the gRPC server binds.")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    port_file: Path | None = Field(
        None,
        description="If set, the bound ports are written here as JSON "
        '{"port": ..., "metrics_port": ...} once the server is serving (atomically).',
    )
    metrics_port: int = Field(
        0, ge=-1, le=65535, description="Prometheus /metrics port; 0 picks a free one, -1 disables."
    )
    log_format: Literal["json", "console"] = Field("console", description="Log renderer.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    grace_seconds: float = Field(
        5.0, ge=0, le=300, description="On SIGTERM: time to drain in-flight calls after NOT_SERVING."
    )
    drain_seconds: float = Field(
        0.5, ge=0, le=60, description="On SIGTERM: time between NOT_SERVING and refusing new calls."
    )
    max_message_bytes: int = Field(
        DEFAULT_MAX_MESSAGE_BYTES,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Largest gRPC message received or sent; larger ones get RESOURCE_EXHAUSTED.",
    )
    malloc_keep_mib: int = Field(
        512,
        ge=0,
        le=65536,
        description="Serve allocations up to this many MiB from malloc's heap instead of fresh mmap "
        "(tensor-sized buffers otherwise page-fault in on every message); 0 keeps glibc's defaults.",
    )
    registry: str = Field(
        "",
        description="Service registry this instance registers in once SERVING (and leaves first thing "
        "on SIGTERM), and that clients resolve peers through: file:///DIR, consul://HOST:PORT or "
        "static:NAME=HOST:PORT,...;NAME=...; empty = none.",
    )
    advertise_host: str = Field(
        "",
        description="Host other processes reach this one at, as registered; empty = --host, or this "
        "machine's hostname when --host is a wildcard (0.0.0.0, ::).",
    )

    @field_validator("registry")
    @classmethod
    def _registry_url(cls, v: str) -> str:
        if not v:
            return v
        try:
            return check_registry_url(v.strip())
        except RegistryError as e:
            raise ValueError(str(e)) from None

    def advertised_host(self) -> str:
        """The host registered for this instance."""
        if self.advertise_host:
            return self.advertise_host
        if self.host in ("0.0.0.0", "::", "[::]", ""):
            return socket.gethostname()
        return self.host.strip("[]")


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], argv: list[str] | None = None) -> S:
    """Build settings from flags and the environment, or exit(2) naming the bad setting."""
    prefix = cls.model_config.get("env_prefix", "")
    args = sys.argv[1:] if argv is None else argv
    try:
        return cls(_cli_parse_args=args, _cli_kebab_case=True, _cli_prog_name=cls.__name__)  # type: ignore[call-arg]
    except ValidationError as e:
        lines = []
        for err in e.errors():
            field = ".".join(str(p) for p in err["loc"])
            if not field:  # a cross-field check: its message names the settings
                lines.append(f"invalid settings: {err['msg']}")
                continue
            env = f"{prefix}{field}".upper()
            flag = "--" + field.replace("_", "-")
            lines.append(f"invalid setting {field} ({flag} / {env}): {err['msg']} (got {err.get('input')!r})")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
