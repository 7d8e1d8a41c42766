"""The registry contract shared by every backend and every consumer.

Consumers (the xDS control plane, internal clients) only ever see healthy
instances: `healthy()` is a snapshot, `watch()` yields a new snapshot each time
the healthy set of a service changes. Producers (`run_service`) `register` an
instance once it is SERVING and `deregister` it when it drains.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, runtime_checkable

# Service names double as Consul service names and Envoy cluster names.
_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")


class RegistryError(ValueError):
    """A registry URL, record or instance that cannot be used; the message names it."""


@dataclass(frozen=True)
class Instance:
    """One running instance of a service, reachable at host:port."""

    service: str
    host: str
    port: int
    # Unique within the service; stable for the life of the process.
    instance_id: str = ""
    # The grpc.health.v1 service name to check ("" = the server as a whole).
    health_service: str = ""
    # Free-form string metadata (e.g. shard index, metrics port).
    meta: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not _NAME.match(self.service):
            raise RegistryError(f"service name {self.service!r} must match {_NAME.pattern}")
        if not self.host:
            raise RegistryError(f"instance of {self.service!r} has an empty host")
        if not 0 < self.port < 65536:
            raise RegistryError(f"instance of {self.service!r} has port {self.port}, not in 1..65535")
        if not self.instance_id:
            object.__setattr__(self, "instance_id", f"{self.service}-{self.host}-{self.port}")
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    @property
    def addr(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@runtime_checkable
class Registry(Protocol):
    """Where instances announce themselves and where consumers find them."""

    async def register(self, instance: Instance) -> None:
        """Announce `instance` (idempotent: re-registering replaces the record)."""

    async def deregister(self, instance: Instance) -> None:
        """Withdraw `instance`; unknown instances are ignored."""

    async def healthy(self, service: str) -> tuple[Instance, ...]:
        """The instances of `service` that pass their health check now, sorted by instance_id."""

    def watch(self, service: str) -> AsyncIterator[tuple[Instance, ...]]:
        """Yield the healthy instances of `service` now, then again every time that set changes."""

    async def close(self) -> None:
        """Release connections and background tasks."""


def check_registry_url(url: str) -> str:
    """`url` if it names a usable registry, else RegistryError. Parses only: contacts nothing."""
    scheme, _, rest = url.partition(":")
    if scheme == "static":
        from mlmesh.discovery.static import StaticRegistry

        StaticRegistry.parse(rest)
    elif scheme == "file":
        from mlmesh.discovery.file import file_url_path

        file_url_path(url)
    elif scheme == "consul":
        from mlmesh.discovery.consul import consul_url_address

        consul_url_address(url)
    else:
        raise RegistryError(
            f"registry URL {url!r}: unknown scheme {scheme!r} (use file:, consul: or static:)"
        )
    return url


def open_registry(url: str) -> Registry:
    """The registry a URL names: file:///DIR, consul://HOST:PORT, static:NAME=ADDR,...;NAME=..."""
    scheme, _, rest = url.partition(":")
    if scheme == "static":
        from mlmesh.discovery.static import StaticRegistry

        return StaticRegistry.parse(rest)
    if scheme == "file":
        from mlmesh.discovery.file import FileRegistry

        return FileRegistry.from_url(url)
    if scheme == "consul":
        from mlmesh.discovery.consul import ConsulRegistry

        return ConsulRegistry.from_url(url)
    raise RegistryError(f"registry URL {url!r}: unknown scheme {scheme!r} (use file:, consul: or static:)")
