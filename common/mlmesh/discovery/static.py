"""Fixed addresses: `static:serving=10.0.0.5:8500,10.0.0.6:8500;ingest=ingest.ml.svc:50051`.

For Kubernetes DNS names and `<TARGET>_ADDR` settings. Every instance is taken
as healthy (the platform's own probes and Envoy's health checks judge them);
`register`/`deregister` change this process's view only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from mlmesh.discovery.base import Instance, RegistryError


def _split_addr(service: str, addr: str) -> tuple[str, int]:
    host, sep, port = addr.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RegistryError(f"static registry: {service}: address {addr!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


class StaticRegistry:
    def __init__(self, instances: dict[str, tuple[Instance, ...]]) -> None:
        self._instances = dict(instances)
        self._changed = asyncio.Condition()

    @classmethod
    def parse(cls, spec: str) -> StaticRegistry:
        services: dict[str, tuple[Instance, ...]] = {}
        for part in filter(None, (p.strip() for p in spec.split(";"))):
            name, sep, addrs = part.partition("=")
            name = name.strip()
            if not sep or not addrs.strip():
                raise RegistryError(f"static registry: {part!r} is not NAME=HOST:PORT[,HOST:PORT...]")
            if name in services:
                raise RegistryError(f"static registry: service {name!r} is listed twice")
            found = []
            for addr in addrs.split(","):
                host, port = _split_addr(name, addr)
                try:
                    found.append(Instance(service=name, host=host, port=port))
                except RegistryError as e:
                    raise RegistryError(f"static registry: {e}") from None
            services[name] = tuple(sorted(found, key=lambda i: i.instance_id))
        return cls(services)

    async def register(self, instance: Instance) -> None:
        async with self._changed:
            others = [
                i for i in self._instances.get(instance.service, ()) if i.instance_id != instance.instance_id
            ]
            self._instances[instance.service] = tuple(
                sorted([*others, instance], key=lambda i: i.instance_id)
            )
            self._changed.notify_all()

    async def deregister(self, instance: Instance) -> None:
        async with self._changed:
            kept = tuple(
                i for i in self._instances.get(instance.service, ()) if i.instance_id != instance.instance_id
            )
            self._instances[instance.service] = kept
            self._changed.notify_all()

    async def healthy(self, service: str) -> tuple[Instance, ...]:
        return self._instances.get(service, ())

    async def watch(self, service: str) -> AsyncIterator[tuple[Instance, ...]]:
        last = self._instances.get(service, ())
        yield last
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda seen=last: self._instances.get(service, ()) != seen)
                last = self._instances.get(service, ())
            yield last

    async def close(self) -> None:
        return None
