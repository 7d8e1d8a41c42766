"""Wiring: settings -> IngestCore -> IngestServicer -> mlmesh.server.run_service."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from mlmesh.logging import get_logger
from mlmesh.server import run_service

from ingest_svc.config import IngestSettings
from ingest_svc.core.ingest import IngestCore
from ingest_svc.servicer import SERVICE_NAME, IngestServicer, add_to_server

log = get_logger("ingest.server")


def open_core(settings: IngestSettings) -> IngestCore:
    return IngestCore(
        settings.data_dir,
        default_max_partition_bytes=settings.default_max_partition_bytes,
        default_lease_seconds=settings.default_lease_seconds,
        max_lease_seconds=settings.max_lease_seconds,
    )


async def _sweep_leases(core: IngestCore, period: float) -> None:
    """Expire overdue leases periodically so the queue gauges stay true while idle."""
    while True:
        await asyncio.sleep(period)
        try:
            expired = await asyncio.to_thread(core.queue.expire_leases)
            if expired:
                log.info("leases expired", count=expired)
        except Exception:
            log.exception("lease sweep failed")


async def serve(settings: IngestSettings, stop_event: asyncio.Event | None = None) -> None:
    """Run ingest until SIGTERM/SIGINT (or `stop_event`)."""
    core: IngestCore | None = None
    sweeper: asyncio.Task[None] | None = None
    servicer = IngestServicer(settings.max_message_bytes)

    def add_servicers(server: grpc.aio.Server) -> list[str]:
        add_to_server(servicer, server)
        return [SERVICE_NAME]

    async def on_start() -> None:
        nonlocal core, sweeper
        # Recovery runs before SERVING: no call sees debris of an interrupted Append.
        core = await asyncio.to_thread(open_core, settings)
        await asyncio.to_thread(core.recover)
        await asyncio.to_thread(core.queue.expire_leases)
        servicer.attach(core)
        if settings.lease_sweep_seconds > 0:
            sweeper = asyncio.create_task(_sweep_leases(core, settings.lease_sweep_seconds))

    async def on_stop() -> None:
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        if core is not None:
            core.close()

    await run_service(
        settings,
        name="ingest",
        add_servicers=add_servicers,
        on_start=on_start,
        on_stop=on_stop,
        log_context={"data_dir": str(settings.data_dir)},
        stop_event=stop_event,
    )
