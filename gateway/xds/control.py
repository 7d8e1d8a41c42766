"""The control loop: the gateway config plus the registry's live endpoints -> snapshots.

One watch task per registry service the config's clusters name; each change of
a service's healthy instances builds a new snapshot and hands it to the cache,
which pushes what changed to every connected Envoy. Runs on one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from mlmesh.discovery import Instance, Registry
from mlmesh.logging import get_logger

from gateway.xds.ads import SnapshotCache
from gateway.xds.config import GatewayConfig
from gateway.xds.snapshot import build_snapshot

log = get_logger("gateway.xds")


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
                    self._endpoints[service] = tuple(instances)
                    if first.is_set():
                        self.rebuild(f"endpoints of {service}", instances)
                    first.set()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a registry hiccup must not end the control plane
                log.warning("registry_watch_failed", service=service, error=repr(e))
                first.set()
                await asyncio.sleep(1.0)

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
