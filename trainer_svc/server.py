"""Process wiring of the two roles on top of mlmesh.server.run_service."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from mlmesh.discovery import RegistryError
from mlmesh.logging import get_logger
from mlmesh.server import run_service
from mlmesh.trainer.v1 import trainer_pb2_grpc

from trainer_svc.clients import Connector, CoordinatorClient, IngestClient, ParamClient
from trainer_svc.config import CoordinatorSettings, WorkerSettings
from trainer_svc.core.cache import PartitionCache
from trainer_svc.core.coordinator import Coordinator, CoordinatorConfig
from trainer_svc.core.spec import JobSpec
from trainer_svc.core.store import JobStore
from trainer_svc.core.types import FeatureInfo
from trainer_svc.core.worker import TrainingWorker, WorkerConfig
from trainer_svc.peers import Peers, WorkerPeers
from trainer_svc.servicer import SERVICE_NAME, TrainerServicer

log = get_logger(__name__)


def build_coordinator(
    settings: CoordinatorSettings, ingest_addr: str, ps_addrs: list[str]
) -> tuple[Coordinator, IngestClient, ParamClient]:
    policy = settings.call_policy()
    ingest = IngestClient(ingest_addr, policy)
    params = ParamClient(ps_addrs, policy)
    config = CoordinatorConfig(
        ingest_addr=ingest_addr,
        ps_addrs=tuple(ps_addrs),
        model_repo=settings.model_repo,
        eval_batch_size=settings.eval_batch_size,
        worker_timeout_seconds=settings.worker_timeout_seconds,
        checkpoint_seconds=settings.checkpoint_seconds,
        min_partition_bytes=settings.min_partition_bytes,
        # A quarter of the message limit leaves room for the request's other fields.
        request_bytes=min(CoordinatorConfig.request_bytes, settings.max_message_bytes // 4),
    )
    return Coordinator(config, JobStore(settings.work_dir), ingest, params), ingest, params


async def serve_coordinator(settings: CoordinatorSettings, stop_event: asyncio.Event | None = None) -> None:
    peers = Peers(settings)
    try:
        ingest_addr, ps_addrs = await peers.resolve()
    except RegistryError as e:
        await peers.close()
        raise SystemExit(f"trainer coordinator: {e}") from None
    coordinator, ingest, params = build_coordinator(settings, ingest_addr, ps_addrs)
    peers.attach(ingest, params, coordinator)
    settings.model_repo.mkdir(parents=True, exist_ok=True)
    halt = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    def add_servicers(server: grpc.aio.Server) -> list[str]:
        trainer_pb2_grpc.add_TrainerServiceServicer_to_server(TrainerServicer(coordinator), server)
        return [SERVICE_NAME]

    async def on_start() -> None:
        coordinator.load()
        tasks.append(asyncio.create_task(coordinator.prewarm(), name="tf-prewarm"))
        tasks.append(
            asyncio.create_task(coordinator.run_monitor(halt, settings.monitor_seconds), name="monitor")
        )

    async def on_stop() -> None:
        halt.set()
        await _finish(tasks, timeout=5.0)
        await peers.close()
        await coordinator.close()
        await asyncio.gather(ingest.close(), params.close(), return_exceptions=True)

    await run_service(
        settings,
        name="trainer-coordinator",
        add_servicers=add_servicers,
        on_start=on_start,
        on_stop=on_stop,
        stop_event=stop_event,
    )


async def serve_worker(settings: WorkerSettings, stop_event: asyncio.Event | None = None) -> None:
    policy = settings.call_policy()
    peers = WorkerPeers(settings)
    try:
        coordinator_addr = await peers.coordinator_addr()
    except RegistryError as e:
        await peers.close()
        raise SystemExit(f"trainer worker: {e}") from None
    coordinator = CoordinatorClient(coordinator_addr, policy)
    connector = Connector(policy)
    peers.follow(coordinator, connector)
    cache = PartitionCache(settings.cache_dir, settings.cache_max_bytes)
    halt = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def train() -> None:
        # TensorFlow loads in a thread so health checks answer meanwhile.
        device = await asyncio.to_thread(_load_tensorflow, settings.tf_threads)
        log.info("compute device", device=device, tf_threads=settings.tf_threads or "default")
        config = WorkerConfig(
            worker_id=settings.worker_id,
            device=device,
            poll_seconds=settings.poll_seconds,
            lease_seconds=settings.lease_seconds,
            report_every_seconds=settings.report_every_seconds,
            prefetch=settings.prefetch,
            read_ahead=settings.read_ahead,
        )
        worker = TrainingWorker(config, coordinator, connector, cache, _make_runner)
        await worker.run(halt)

    async def on_start() -> None:
        tasks.append(asyncio.create_task(train(), name="training"))

    async def on_stop() -> None:
        halt.set()
        await _finish(tasks, timeout=settings.grace_seconds + 5.0)
        await peers.close()
        await connector.close()
        await coordinator.close()

    await run_service(
        settings,
        name="trainer-worker",
        add_servicers=lambda server: [],
        on_start=on_start,
        on_stop=on_stop,
        log_context={"worker_id": settings.worker_id},
        stop_event=stop_event,
    )


def _load_tensorflow(threads: int) -> str:
    from trainer_svc.core import step, tfmodel  # noqa: F401  (the import is the point)

    tfmodel.configure_threads(threads)
    return tfmodel.compute_device()


async def _make_runner(spec: JobSpec, schema: dict[str, FeatureInfo]) -> object:
    def build() -> object:
        from trainer_svc.core import step, tfmodel

        ms = tfmodel.build(spec)
        return step.StepRunner(ms, tfmodel.input_specs(ms, schema))

    return await asyncio.to_thread(build)


async def _finish(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    """Let tasks end on their own for `timeout` seconds, then cancel them."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(BaseException):
            await task
