"""Where the trainer's peers are, by address or by name.

Coordinator (`Peers`): `--ingest-addr` / `--ps-addrs`, or, when those are left empty
and `--registry` is set, the registry's live `ingest` and `paramserver` instances
(shards ordered by meta["shard"]), followed for the life of the process. When a peer
moves (restarted on a new port), the coordinator's client is retargeted (its next
call, retries included, goes to the new address) and the coordinator's config is
updated, so workers acquiring work are handed the new address too.

Worker (`WorkerPeers`): `--coordinator-addr`, or the registry's `trainer`; with
`--registry`, ingest and the shards are followed too and pinned in the worker's
`Connector`, so a job in progress moves with them instead of waiting for the next
assignment.
"""

from __future__ import annotations

import dataclasses

from mlmesh.discovery import Registry, open_registry
from mlmesh.discovery.resolve import Follower
from mlmesh.logging import get_logger

from trainer_svc.clients import Connector, CoordinatorClient, IngestClient, ParamClient
from trainer_svc.config import CoordinatorSettings, WorkerSettings
from trainer_svc.core.coordinator import Coordinator

log = get_logger(__name__)


class Peers:
    """The coordinator's ingest and shard addresses. One event loop; `close()` when done."""

    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = settings
        self._registry: Registry | None = None
        self._followers: list[Follower] = []
        self._ingest: IngestClient | None = None
        self._params: ParamClient | None = None
        self._coordinator: Coordinator | None = None

    async def resolve(self) -> tuple[str, list[str]]:
        """Addresses to start with: from the settings, else the first healthy ones registered
        (waiting up to `retry_seconds` for them; RegistryError naming the service after that)."""
        ingest, shards = self.settings.ingest_addr, self.settings.ps_addr_list
        if ingest and shards:
            return ingest, shards
        self._registry = open_registry(self.settings.registry)
        timeout = max(self.settings.retry_seconds, 1.0)
        if not ingest:
            follower = Follower(self._registry, "ingest", self._ingest_moved)
            self._followers.append(follower)
            ingest = (await follower.start(timeout))[0]
        if not shards:
            follower = Follower(self._registry, "paramserver", self._shards_moved, shards=True)
            self._followers.append(follower)
            shards = await follower.start(timeout)
        log.info("peers resolved through the registry", ingest=ingest, shards=shards)
        return ingest, shards

    def attach(self, ingest: IngestClient, params: ParamClient, coordinator: Coordinator) -> None:
        """The clients and coordinator to move when a followed peer moves."""
        self._ingest, self._params, self._coordinator = ingest, params, coordinator

    def _ingest_moved(self, addrs: list[str]) -> None:
        if self._ingest is not None:
            self._ingest.retarget(addrs[0])
        if self._coordinator is not None:
            self._coordinator.config = dataclasses.replace(self._coordinator.config, ingest_addr=addrs[0])

    def _shards_moved(self, addrs: list[str]) -> None:
        if self._params is not None:
            try:
                self._params.retarget(addrs)
            except ValueError as e:  # the shard count is fixed for a running coordinator
                log.error("parameter-server shard set changed size; not followed", error=str(e))
                return
        if self._coordinator is not None:
            self._coordinator.config = dataclasses.replace(self._coordinator.config, ps_addrs=tuple(addrs))

    async def close(self) -> None:
        for f in self._followers:
            await f.close()
        if self._registry is not None:
            await self._registry.close()


class WorkerPeers:
    """The worker's coordinator address, and its data peers followed by name. One event loop."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self._registry: Registry | None = open_registry(settings.registry) if settings.registry else None
        self._followers: list[Follower] = []
        self._coordinator: CoordinatorClient | None = None

    async def coordinator_addr(self) -> str:
        """`--coordinator-addr`, else the registry's first healthy `trainer` (waiting up to
        `retry_seconds`; RegistryError after that), followed from then on."""
        if self.settings.coordinator_addr:
            return self.settings.coordinator_addr
        assert self._registry is not None  # the settings require one or the other
        follower = Follower(self._registry, "trainer", self._coordinator_moved)
        self._followers.append(follower)
        return (await follower.start(max(self.settings.retry_seconds, 1.0)))[0]

    def follow(self, coordinator: CoordinatorClient, connector: Connector) -> None:
        """With a registry: move `coordinator` when it moves, pin ingest and the shards in `connector`."""
        self._coordinator = coordinator
        if self._registry is None:
            return
        for service, pin, shards in (
            ("ingest", connector.pin_ingest, False),
            ("paramserver", connector.pin_shards, True),
        ):
            follower = Follower(self._registry, service, pin, shards=shards)
            follower.start_applying()
            self._followers.append(follower)

    def _coordinator_moved(self, addrs: list[str]) -> None:
        if self._coordinator is not None:
            self._coordinator.retarget(addrs[0])

    async def close(self) -> None:
        for f in self._followers:
            await f.close()
        if self._registry is not None:
            await self._registry.close()
