"""Process lifecycle of a shard: resume from checkpoints, serve, checkpoint on a timer and on stop."""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor

import grpc
from mlmesh.errors import MlmeshError
from mlmesh.logging import configure_logging, get_logger
from mlmesh.server import run_service

from paramserver_svc.config import ParamServerSettings
from paramserver_svc.core.shard import Shard
from paramserver_svc.servicer import SERVICE_NAME, ParameterServerServicer, add_to_server

NAME = "paramserver_svc"


def build_shard(settings: ParamServerSettings) -> Shard:
    """A shard with every checkpoint in its directory loaded; SystemExit on a bad one
    (resuming with part of the state would silently lose training)."""
    settings.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    shard = Shard(
        settings.shard_index,
        settings.num_shards,
        settings.checkpoint_dir,
        settings.checkpoint_keep,
        sync_checkpoint_every=settings.checkpoint_every_steps,
        max_staged_bytes=settings.max_staged_bytes,
    )
    try:
        loaded = shard.load_all()
    except MlmeshError as e:
        raise SystemExit(
            f"paramserver_svc: cannot resume from {settings.checkpoint_dir}: {e.message}"
        ) from None
    get_logger(NAME).info("resumed", checkpoint_dir=str(settings.checkpoint_dir), checkpoints=len(loaded))
    return shard


async def _checkpoint_periodically(
    shard: Shard, executor: ThreadPoolExecutor, every_seconds: float, every_steps: int
) -> None:
    """Checkpoint each job every `every_seconds` (if it changed) or after `every_steps` updates."""
    log = get_logger(NAME)
    loop = asyncio.get_running_loop()
    # With step-based checkpoints, look often: a SYNC job's aligned snapshot waits in memory
    # until this loop writes it.
    tick = min(every_seconds or 0.1, 0.1) if every_steps else every_seconds
    while True:
        await asyncio.sleep(tick)
        try:
            saved = await loop.run_in_executor(executor, shard.save_due, every_seconds, every_steps)
            if saved:
                log.debug("periodic checkpoint", jobs=len(saved))
        except Exception:  # keep the timer alive; the next round retries
            log.exception("periodic checkpoint failed")


async def serve(settings: ParamServerSettings, stop_event: asyncio.Event | None = None) -> None:
    """Run one shard until SIGTERM/SIGINT (or `stop_event`)."""
    context = {"shard": settings.shard_index}
    # Configured before run_service does it, so the resume is logged in the chosen format.
    configure_logging(settings.log_format, settings.log_level, service=NAME, **context)
    # Loaded before the port opens: no call can see (or write) pre-resume state.
    shard = build_shard(settings)
    executor = ThreadPoolExecutor(max_workers=settings.worker_threads, thread_name_prefix="ps")
    timer: asyncio.Task[None] | None = None

    def add_servicers(server: grpc.aio.Server) -> list[str]:
        add_to_server(ParameterServerServicer(shard, executor, settings.max_stream_bytes), server)
        return [SERVICE_NAME]

    async def on_start() -> None:
        nonlocal timer
        if settings.checkpoint_every_seconds > 0 or settings.checkpoint_every_steps > 0:
            timer = asyncio.create_task(
                _checkpoint_periodically(
                    shard, executor, settings.checkpoint_every_seconds, settings.checkpoint_every_steps
                )
            )

    async def on_stop() -> None:
        if timer is not None:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
        saved = await asyncio.get_running_loop().run_in_executor(executor, shard.save_dirty)
        get_logger(NAME).info("final checkpoint", jobs=len(saved))
        executor.shutdown(wait=True)

    await run_service(
        settings,
        name=NAME,
        add_servicers=add_servicers,
        on_start=on_start,
        on_stop=on_stop,
        log_context=context,
        stop_event=stop_event,
    )
