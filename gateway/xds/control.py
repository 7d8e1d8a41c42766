"""The control loop: the gateway config plus the registry's live endpoints -> snapshots.

One watch task per registry service the config's clusters name; each change of
a service's healthy instances builds a new snapshot and hands it to the cache,
which pushes what changed to every connected Envoy. Runs on one event loop.

Envoy's EDS takes IP addresses only, so instances registered under a DNS name
(the `static` registry with Kubernetes service names) are resolved here, one
endpoint per address, and resolved again every `DNS_REFRESH_SECONDS` (a headless
service's pods come and go); a name that does not resolve is left out, with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import replace

from mlmesh.discovery import Instance, Registry
from mlmesh.logging import get_logger

from gateway.xds.ads import SnapshotCache
from gateway.xds.config import GatewayConfig
from gateway.xds.snapshot import build_snapshot

log = get_logger("gateway.xds")

DNS_REFRESH_SECONDS = 5.0


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def resolve(instances: Sequence[Instance]) -> tuple[Instance, ...]:
    """`instances` with every DNS name replaced by one instance per address it resolves to."""
    loop = asyncio.get_running_loop()
    out: list[Instance] = []
    for inst in instances:
        if is_ip(inst.host):
            out.append(inst)
            continue
        try:
            infos = await loop.getaddrinfo(inst.host, inst.port, type=socket.SOCK_STREAM)
        except OSError as e:
            log.warning("endpoint_unresolved", service=inst.service, host=inst.host, error=str(e))
            continue
        for ip in sorted({str(info[4][0]) for info in infos}):
            out.append(replace(inst, host=ip, instance_id=f"{inst.instance_id}@{ip}"))
    return tuple(out)


class ControlPlane:
    def __init__(
        self,
        config: GatewayConfig,
        registry: Registry,
        *,
        descriptor_set: bytes,
        admin_token: str | None,
        cache: SnapshotCache | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.cache = cache or SnapshotCache()
        self._descriptor_set = descriptor_set
        self._admin_token = admin_token
        self._endpoints: dict[str, tuple[Instance, ...]] = {}
        self._named: dict[str, tuple[Instance, ...]] = {}  # as registered, when some are DNS names
        self._serial = 0
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def services(self) -> list[str]:
        return sorted({c.service for c in self.config.clusters})

    async def start(self, timeout: float = 10.0) -> None:
        """Watch every service; once each has reported (or `timeout` passed: a slow registry
        must not keep Envoy without listeners) the first snapshot exists."""
        first = {s: asyncio.Event() for s in self.services}
        for service in self.services:
            self._tasks.append(asyncio.create_task(self._watch(service, first[service])))
        try:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in first.values())), timeout)
        except TimeoutError:
            silent = [s for s, e in first.items() if not e.is_set()]
            log.warning("registry_slow", services=silent, timeout_seconds=timeout)
            for e in first.values():
                e.set()
        self.rebuild("started")

    async def _watch(self, service: str, first: asyncio.Event) -> None:
        while True:
            try:
                async for instances in self.registry.watch(service):
                    if all(is_ip(i.host) for i in instances):
                        self._named.pop(service, None)
                        self._endpoints[service] = tuple(instances)
                    else:
                        self._named[service] = tuple(instances)
                        self._endpoints[service] = await resolve(instances)
                        self._ensure_dns_refresh()
                    if first.is_set():
                        self.rebuild(f"endpoints of {service}", instances)
                    first.set()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a registry hiccup must not end the control plane
                log.warning("registry_watch_failed", service=service, error=repr(e))
                first.set()
                await asyncio.sleep(1.0)

    def _ensure_dns_refresh(self) -> None:
        if not any(t.get_name() == "dns-refresh" and not t.done() for t in self._tasks):
            self._tasks.append(asyncio.create_task(self._refresh_dns(), name="dns-refresh"))

    async def _refresh_dns(self) -> None:
        while self._named:
            await asyncio.sleep(DNS_REFRESH_SECONDS)
            for service, named in list(self._named.items()):
                resolved = await resolve(named)
                if resolved != self._endpoints.get(service):
                    self._endpoints[service] = resolved
                    self.rebuild(f"DNS of {service}", resolved)

    def rebuild(self, reason: str, instances: Sequence[Instance] | None = None) -> None:
        self._serial += 1
        snapshot = build_snapshot(
            self._serial,
            self.config,
            self._endpoints,
            descriptor_set=self._descriptor_set,
            admin_token=self._admin_token,
        )
        log.info(
            "snapshot",
            serial=self._serial,
            reason=reason,
            endpoints={s: [i.addr for i in v] for s, v in sorted(self._endpoints.items())},
        )
        self.cache.set(snapshot)

    def set_config(self, config: GatewayConfig) -> None:
        """Swap in a validated config (endpoints of new services appear once watched)."""
        self.config = config
        for service in self.services:
            if service not in self._endpoints:
                reported = asyncio.Event()
                reported.set()  # each report of a newly watched service rebuilds, the first too
                self._tasks.append(asyncio.create_task(self._watch(service, reported)))
        self.rebuild("config")

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        await self.registry.close()
