"""Peers by name instead of by address: follow a service in the registry and hand its
current address(es) to a client whenever they change.

`Follower` is what an internal client uses when its `<TARGET>_ADDR` setting is left
empty and `--registry` is set: `await follower.start()` waits (bounded) for a first
usable set and returns it (to build the client with), then `apply(addrs)` is called
on every change, so the client's next call goes to the new address. For sharded
services (`shards=True`) the addresses are ordered by `meta["shard"]` and only a
complete set 0..n-1 is applied: a shard restarting on a new port swaps that one
address; a set with a gap keeps the last complete one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from mlmesh.discovery.base import Instance, Registry, RegistryError
from mlmesh.logging import get_logger

log = get_logger(__name__)


def single_addr(instances: Sequence[Instance]) -> list[str] | None:
    """The first healthy instance (instances come sorted by id), or None."""
    return [instances[0].addr] if instances else None


def shard_addrs(instances: Sequence[Instance]) -> list[str] | None:
    """Addresses in shard-index order from meta["shard"], or None unless shards 0..n-1 are all
    there (n from meta["num_shards"] when the shards say it, else the highest index + 1)."""
    by_index: dict[int, str] = {}
    declared: set[int] = set()
    for inst in instances:
        try:
            index = int(inst.meta["shard"])
        except (KeyError, ValueError):
            log.warning("registered shard without a meta['shard'] index; ignored", instance=inst.instance_id)
            continue
        by_index.setdefault(index, inst.addr)
        with contextlib.suppress(KeyError, ValueError):
            declared.add(int(inst.meta["num_shards"]))
    if not by_index:
        return None
    if len(declared) > 1:
        log.warning("shards disagree on num_shards; waiting", declared=sorted(declared))
        return None
    count = declared.pop() if declared else max(by_index) + 1
    if set(by_index) != set(range(count)):
        return None
    return [by_index[i] for i in range(count)]


class Follower:
    """Keeps one client pointed at the live instances of one service. One event loop."""

    def __init__(
        self,
        registry: Registry,
        service: str,
        apply: Callable[[list[str]], None],
        *,
        shards: bool = False,
    ) -> None:
        self.registry = registry
        self.service = service
        self.apply = apply
        self.pick = shard_addrs if shards else single_addr
        self.addrs: list[str] | None = None
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float) -> list[str]:
        """Follow from now on; the first usable addresses, or RegistryError after `timeout` s."""
        self._task = asyncio.get_running_loop().create_task(self._follow(), name=f"follow:{self.service}")
        try:
            await asyncio.wait_for(self._first.wait(), timeout)
        except TimeoutError:
            await self.close()
            raise RegistryError(
                f"no healthy {self.service!r} instances in the registry within {timeout:g}s"
            ) from None
        assert self.addrs is not None
        return self.addrs

    def start_applying(self) -> None:
        """Follow from now on without waiting, applying every set, the first included."""
        self._first.set()
        self._task = asyncio.get_running_loop().create_task(self._follow(), name=f"follow:{self.service}")

    async def _follow(self) -> None:
        async for instances in self.registry.watch(self.service):
            addrs = self.pick(instances)
            if addrs is None or addrs == self.addrs:
                continue
            old, self.addrs = self.addrs, addrs
            if self._first.is_set():  # the first set is start()'s answer; later ones move the client
                log.info("peer moved", service=self.service, old=old, new=addrs)
                self.apply(addrs)
            self._first.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
