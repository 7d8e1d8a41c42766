"""`consul://HOST:PORT`: Consul's agent HTTP API through py-consul's asyncio client.

- register: `PUT /v1/agent/service/register` with a `grpc` check on
  `host:port/health_service` every `check_interval` and
  `DeregisterCriticalServiceAfter`, so an instance that dies without deregistering
  is dropped by Consul itself;
- deregister: `PUT /v1/agent/service/deregister/<id>`;
- healthy/watch: `GET /v1/health/service/<name>?passing`, as blocking queries
  (`index` = the last `X-Consul-Index`, `wait`), one loop per service shared by
  every watcher of this process. Per Consul's blocking-query rules the index is
  reset when it goes backwards and never sent as 0, and the loop is rate-limited.

The ACL token comes from `CONSUL_HTTP_TOKEN` (read by py-consul). While the agent
cannot be reached, watchers keep the last set they had and the loop retries (an
agent never reached yet reads as no healthy instances).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import consul
import consul.aio

from mlmesh.discovery.base import Instance, RegistryError
from mlmesh.discovery.monitor import Monitors, Publish
from mlmesh.logging import get_logger

log = get_logger(__name__)

# Consul meta keys allow letters, digits, '-' and '_'; this one carries Instance.health_service.
HEALTH_SERVICE_META = "mlmesh_health_service"
# Blocking queries: at most this often (Consul's docs ask clients to rate-limit the loop).
_MIN_QUERY_SECONDS = 0.05
_RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)


def consul_url_address(url: str) -> tuple[str, int]:
    """(host, port) of `consul://HOST[:PORT]` (port 8500 by default); RegistryError otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "consul":
        raise RegistryError(f"registry URL {url!r} is not a consul: URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise RegistryError(f"registry URL {url!r}: use consul://HOST:PORT (no path or query)")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as e:
        raise RegistryError(f"registry URL {url!r}: {e}") from None
    if not host:
        raise RegistryError(f"registry URL {url!r}: no agent host (use consul://127.0.0.1:8500)")
    return host, port or 8500


def _seconds(value: float) -> str:
    return f"{value:g}s"


class ConsulRegistry:
    """A Consul agent as the registry. Owned by one event loop (the aiohttp session is made in it)."""

    def __init__(
        self,
        host: str,
        port: int = 8500,
        *,
        check_interval: float = 1.0,
        check_timeout: float = 1.0,
        deregister_critical_after: float = 60.0,
        wait_seconds: float = 30.0,
        request_timeout: float = 5.0,
    ) -> None:
        self.host, self.port = host, port
        self.check_interval = check_interval
        self.check_timeout = check_timeout
        self.deregister_critical_after = deregister_critical_after
        self.wait_seconds = wait_seconds
        self.request_timeout = request_timeout
        self._client: consul.aio.Consul | None = None
        self._monitors = Monitors(self._follow)

    @classmethod
    def from_url(cls, url: str) -> ConsulRegistry:
        host, port = consul_url_address(url)
        return cls(host, port)

    def _consul(self) -> consul.aio.Consul:
        if self._client is None:
            self._client = consul.aio.Consul(host=self.host, port=self.port)
        return self._client

    # --- producers --------------------------------------------------------

    async def register(self, instance: Instance) -> None:
        meta = dict(instance.meta)
        if instance.health_service:
            meta[HEALTH_SERVICE_META] = instance.health_service
        check = consul.Check.grpc(
            f"{instance.addr}/{instance.health_service}" if instance.health_service else instance.addr,
            _seconds(self.check_interval),
            timeout=_seconds(self.check_timeout),
            deregister=_seconds(self.deregister_critical_after),
        )
        call = self._consul().agent.service.register(
            instance.service,
            service_id=instance.instance_id,
            address=instance.host,
            port=instance.port,
            meta=meta,
            check=check,
        )
        if not await asyncio.wait_for(call, self.request_timeout):
            raise RegistryError(f"consul agent {self.host}:{self.port} refused to register {instance.addr}")

    async def deregister(self, instance: Instance) -> None:
        # Unknown to the agent (404): nothing to withdraw.
        with contextlib.suppress(consul.NotFound):
            await asyncio.wait_for(
                self._consul().agent.service.deregister(instance.instance_id), self.request_timeout
            )

    # --- consumers --------------------------------------------------------

    async def healthy(self, service: str) -> tuple[Instance, ...]:
        return await self._monitors.healthy(service)

    def watch(self, service: str) -> AsyncIterator[tuple[Instance, ...]]:
        return self._monitors.watch(service)

    async def close(self) -> None:
        await self._monitors.close()
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _follow(self, service: str, publish: Publish) -> None:
        index: int | None = None
        failures = 0
        answered = False
        while True:
            started = asyncio.get_running_loop().time()
            try:
                call = self._consul().health.service(
                    service, passing=True, index=index, wait=_seconds(self.wait_seconds)
                )
                new_index, entries = await asyncio.wait_for(
                    call, self.wait_seconds * 17 / 16 + self.request_timeout
                )
            except (aiohttp.ClientError, consul.ConsulException, TimeoutError, OSError) as e:
                delay = _RETRY_SECONDS[min(failures, len(_RETRY_SECONDS) - 1)]
                if failures == 0:
                    log.warning(
                        "consul watch failed; keeping the last healthy set and retrying",
                        service=service,
                        agent=f"{self.host}:{self.port}",
                        error=repr(e),
                    )
                failures += 1
                if not answered:  # nothing known yet: say so rather than keep healthy() waiting
                    await publish(())
                await asyncio.sleep(delay)
                continue
            if failures:
                log.info("consul watch recovered", service=service, after_failures=failures)
                failures = 0
            answered = True
            await publish(instances_of(service, entries))
            new = int(new_index or 0)
            # Blocking-query rules: an index that went backwards restarts from scratch; never send 0.
            index = 1 if new <= 0 else (None if index is not None and new < index else new)
            elapsed = asyncio.get_running_loop().time() - started
            if elapsed < _MIN_QUERY_SECONDS:
                await asyncio.sleep(_MIN_QUERY_SECONDS - elapsed)


def instances_of(service: str, entries: Iterable[Any]) -> list[Instance]:
    """Instances from `/v1/health/service/<name>` entries; malformed entries are skipped with a warning."""
    found = []
    for entry in entries or ():
        try:
            svc, node = entry["Service"], entry.get("Node") or {}
            meta = dict(svc.get("Meta") or {})
            health_service = meta.pop(HEALTH_SERVICE_META, "")
            found.append(
                Instance(
                    service=service,
                    host=svc.get("Address") or node.get("Address") or "",
                    port=int(svc["Port"]),
                    instance_id=svc["ID"],
                    health_service=health_service,
                    meta={str(k): str(v) for k, v in meta.items()},
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            log.warning(
                "ignoring malformed consul health entry",
                service=service,
                entry=repr(entry)[:300],
                error=str(e),
            )
    return found
