"""One background checker per service, shared by every `healthy()` and `watch()` in a process.

A backend supplies `follow(service, publish)`: a coroutine that runs until
cancelled and awaits `publish(instances)` with the full healthy set (not a delta)
each time it has looked. `Monitors` starts it on the first request for that
service, keeps the latest set, and wakes the watchers only when the set changed.
Not thread-safe: one event loop owns a `Monitors`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from mlmesh.discovery.base import Instance
from mlmesh.logging import get_logger

log = get_logger(__name__)

Publish = Callable[[Iterable[Instance]], Awaitable[None]]
Follow = Callable[[str, Publish], Awaitable[None]]

# A follower that crashed is restarted after this long (its failure is logged).
RESTART_SECONDS = 1.0


def _ordered(instances: Iterable[Instance]) -> tuple[Instance, ...]:
    return tuple(sorted(instances, key=lambda i: i.instance_id))


class _Service:
    def __init__(self) -> None:
        self.instances: tuple[Instance, ...] = ()
        self.version = 0  # bumped on every change; 0 = nothing published yet
        self.changed = asyncio.Condition()
        self.task: asyncio.Task[None] | None = None

    async def publish(self, instances: Iterable[Instance]) -> None:
        new = _ordered(instances)
        if self.version and new == self.instances:
            return
        async with self.changed:
            self.instances, self.version = new, self.version + 1
            self.changed.notify_all()

    async def newer_than(self, version: int) -> tuple[int, tuple[Instance, ...]]:
        async with self.changed:
            await self.changed.wait_for(lambda: self.version > version)
            return self.version, self.instances


class Monitors:
    """The shared healthy sets of the services this process asked about."""

    def __init__(self, follow: Follow) -> None:
        self._follow = follow
        self._services: dict[str, _Service] = {}

    def _service(self, name: str) -> _Service:
        svc = self._services.get(name)
        if svc is None:
            svc = self._services[name] = _Service()
        if svc.task is None or svc.task.done():
            svc.task = asyncio.get_running_loop().create_task(self._run(name, svc), name=f"registry:{name}")
        return svc

    async def _run(self, name: str, svc: _Service) -> None:
        while True:
            try:
                await self._follow(name, svc.publish)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("registry follower failed; restarting", service=name, error=repr(e))
                await asyncio.sleep(RESTART_SECONDS)

    async def healthy(self, service: str) -> tuple[Instance, ...]:
        """The current set, once the follower has looked at least once."""
        _, instances = await self._service(service).newer_than(0)
        return instances

    async def watch(self, service: str) -> AsyncIterator[tuple[Instance, ...]]:
        svc = self._service(service)
        version = 0
        while True:
            version, instances = await svc.newer_than(version)
            yield instances

    async def close(self) -> None:
        tasks = [s.task for s in self._services.values() if s.task is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._services.clear()
