"""A server announcing itself: register once SERVING, withdraw first thing on stop.

`run_service` owns one `Announcement`. A registry that cannot be reached when the
service starts must not stop the service: registration is retried in the
background (with backoff, each failure logged) until it succeeds or the service
stops. Withdrawing is bounded in time so a dead registry cannot hold up a drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

from mlmesh.discovery.base import Instance, Registry, open_registry
from mlmesh.logging import get_logger

log = get_logger(__name__)

# The name a process passes to run_service -> the service name it registers under.
# Clients, the xDS control plane and Envoy clusters look services up by these names.
REGISTRY_NAMES = {
    "ingest": "ingest",
    "ingest_svc": "ingest",
    "paramserver_svc": "paramserver",
    "trainer-coordinator": "trainer",
    "trainer-worker": "trainer-worker",
    "serving_svc": "serving",
}


def registry_name(process_name: str) -> str:
    """The registry service name of a process: the table above, else the name made DNS-like."""
    known = REGISTRY_NAMES.get(process_name)
    if known is not None:
        return known
    name = re.sub(r"[^a-z0-9_.-]", "-", process_name.lower()).strip("-") or "service"
    return name if name[0].isalpha() else f"s-{name}"


class Announcement:
    """Keeps one instance registered while its server runs. Owned by one event loop."""

    def __init__(
        self,
        url: str,
        instance: Instance,
        *,
        initial_backoff: float = 0.5,
        max_backoff: float = 10.0,
        withdraw_timeout: float = 2.0,
    ) -> None:
        self.url = url
        self.instance = instance
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.withdraw_timeout = withdraw_timeout
        self.registered = asyncio.Event()
        self._stopping = asyncio.Event()
        self._in_flight = False
        self._registry: Registry | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._register(), name="registry:announce")

    async def _register(self) -> None:
        backoff = self.initial_backoff
        attempt = 0
        while not self._stopping.is_set():
            attempt += 1
            try:
                if self._registry is None:
                    self._registry = open_registry(self.url)
                self._in_flight = True
                await self._registry.register(self.instance)
            except Exception as e:
                log.warning(
                    "registration failed; retrying in the background",
                    registry=self.url,
                    instance=self.instance.instance_id,
                    attempt=attempt,
                    retry_in=backoff,
                    error=repr(e),
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            finally:
                self._in_flight = False
            self.registered.set()
            log.info(
                "registered",
                registry=self.url,
                service=self.instance.service,
                instance=self.instance.instance_id,
                addr=self.instance.addr,
            )
            return

    async def withdraw(self) -> None:
        """Stop retrying, deregister if registered (within `withdraw_timeout`), release the registry.
        Idempotent. A registration in flight is let finish first (bounded by the same timeout),
        so it cannot land after the withdrawal."""
        self._stopping.set()
        interrupted = False
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.withdraw_timeout)
            except TimeoutError:
                interrupted = self._in_flight
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        registry, self._registry = self._registry, None
        if registry is None:
            return
        try:
            if self.registered.is_set() or interrupted:
                await asyncio.wait_for(registry.deregister(self.instance), self.withdraw_timeout)
                self.registered.clear()
                log.info("deregistered", registry=self.url, instance=self.instance.instance_id)
        except Exception as e:
            log.warning(
                "deregistration failed (the registry's health checks will drop the instance)",
                registry=self.url,
                instance=self.instance.instance_id,
                error=repr(e),
            )
        finally:
            with contextlib.suppress(Exception):
                await registry.close()
