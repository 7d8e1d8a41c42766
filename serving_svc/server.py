"""Wiring: settings → source, manager, servicer → run_service."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from mlmesh.server import run_service
from mlmesh.serving.v1 import admin_pb2_grpc, serving_pb2_grpc

from serving_svc import tfs_servicer
from serving_svc.admin_servicer import ADMIN_SERVICE_NAME, ServingAdminServicer
from serving_svc.config import ServingSettings
from serving_svc.core.dedup import Deduplicator
from serving_svc.core.manager import AvailabilityListener, MemoryOptions, ModelManager
from serving_svc.core.source import ConfigFileSource, RepositorySource, Source
from serving_svc.interceptors import DeadlineInterceptor, DedupInterceptor
from serving_svc.servicer import SERVICE_NAME, ServingServicer


def model_health_name(model: str) -> str:
    """The grpc.health.v1 service name of one model: the model name itself (what a probe
    would ask for: `grpc_health_probe -service=fashion`). SERVING while the model has an
    AVAILABLE version; NOT_SERVING before, after it is removed, and while draining."""
    return model


def build_source(settings: ServingSettings) -> Source:
    if settings.model_config_file is not None:
        return ConfigFileSource(settings.model_config_file, settings.model_config_poll_seconds)
    assert settings.model_repo is not None  # the settings require one of the two
    return RepositorySource(settings.model_repo, settings.model_name_list)


def build(
    settings: ServingSettings, on_availability: AvailabilityListener | None = None
) -> tuple[ModelManager, ServingServicer]:
    """The manager and the servicer over it; both must be used on one event loop."""
    manager = ModelManager(
        build_source(settings),
        poll_seconds=settings.poll_seconds,
        batching=settings.batching_options,
        warmup=settings.warmup,
        load_threads=settings.load_threads,
        stagger_loads_s=settings.stagger_loads_seconds,
        load_niceness=settings.load_niceness,
        memory=MemoryOptions(settings.memory_budget_bytes, settings.memory_estimate_factor),
        on_availability=on_availability,
    )
    return manager, ServingServicer(manager, max_request_examples=settings.max_request_examples)


async def serve(settings: ServingSettings, stop_event: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or `stop_event`). Versions present at start
    are loaded before the port file is written; later ones load in the background.
    Health: overall and per service as every mlmesh server, plus one name per
    model (`model_health_name`); all turn NOT_SERVING when draining."""
    health = HealthServicer()
    pending: set[asyncio.Task[None]] = set()

    def on_availability(model: str, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        # Tasks run in creation order, so the last change wins; after drain starts, set() is ignored.
        task = asyncio.get_running_loop().create_task(health.set(model_health_name(model), status))
        pending.add(task)
        task.add_done_callback(pending.discard)

    manager, servicer = build(settings, on_availability)

    def add_servicers(server: grpc.aio.Server) -> list[str]:
        serving_pb2_grpc.add_ServingServiceServicer_to_server(servicer, server)
        # TF Serving's own API (tensorflow.serving.PredictionService, ModelService) beside ours.
        tfs_names = tfs_servicer.add_to_server(
            manager, server, max_request_examples=settings.max_request_examples
        )
        # On the replica's port only: the gateway routes the prediction services, not the admin one.
        admin_pb2_grpc.add_ServingAdminServiceServicer_to_server(
            ServingAdminServicer(manager.batching), server
        )
        return [SERVICE_NAME, *tfs_names, ADMIN_SERVICE_NAME]

    source = settings.model_config_file or settings.model_repo
    await run_service(
        settings,
        name="serving_svc",
        add_servicers=add_servicers,
        on_start=manager.start,
        on_stop=manager.stop,
        log_context={"model_source": str(source)},
        stop_event=stop_event,
        health=health,
        interceptors=interceptors(settings),
    )


def interceptors(settings: ServingSettings) -> list[grpc.aio.ServerInterceptor]:
    """Deadline first, so a coalesced execution still sees its caller's deadline."""
    dedup = Deduplicator(ttl_s=settings.dedup_ttl_seconds, max_bytes=settings.dedup_cache_bytes)
    return [DeadlineInterceptor(), DedupInterceptor(dedup, content_hash=settings.dedup_content_hash)]
