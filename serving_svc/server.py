"""Wiring: settings → source, manager, servicer → run_service."""

from __future__ import annotations

import asyncio

import grpc
from mlmesh.server import run_service
from mlmesh.serving.v1 import admin_pb2_grpc, serving_pb2_grpc

from serving_svc.admin_servicer import ADMIN_SERVICE_NAME, ServingAdminServicer
from serving_svc.config import ServingSettings
from serving_svc.core.dedup import Deduplicator
from serving_svc.core.manager import ModelManager
from serving_svc.core.source import RepositorySource
from serving_svc.interceptors import DeadlineInterceptor, DedupInterceptor
from serving_svc.servicer import SERVICE_NAME, ServingServicer


def build(settings: ServingSettings) -> tuple[ModelManager, ServingServicer]:
    """The manager and the servicer over it; both must be used on one event loop."""
    manager = ModelManager(
        RepositorySource(settings.model_repo, settings.model_name_list),
        poll_seconds=settings.poll_seconds,
        batching=settings.batching_options,
        warmup=settings.warmup,
    )
    return manager, ServingServicer(manager, max_request_examples=settings.max_request_examples)


async def serve(settings: ServingSettings, stop_event: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or `stop_event`). Versions present at start
    are loaded before the port file is written; later ones load in the background."""
    manager, servicer = build(settings)

    def add_servicers(server: grpc.aio.Server) -> list[str]:
        serving_pb2_grpc.add_ServingServiceServicer_to_server(servicer, server)
        # On the replica's port only: the gateway routes ServingService, not the admin service.
        admin_pb2_grpc.add_ServingAdminServiceServicer_to_server(
            ServingAdminServicer(manager.batching), server
        )
        return [SERVICE_NAME, ADMIN_SERVICE_NAME]

    await run_service(
        settings,
        name="serving_svc",
        add_servicers=add_servicers,
        on_start=manager.start,
        on_stop=manager.stop,
        log_context={"model_repo": str(settings.model_repo)},
        stop_event=stop_event,
        interceptors=interceptors(settings),
    )


def interceptors(settings: ServingSettings) -> list[grpc.aio.ServerInterceptor]:
    """Deadline first, so a coalesced execution still sees its caller's deadline."""
    dedup = Deduplicator(ttl_s=settings.dedup_ttl_seconds, max_bytes=settings.dedup_cache_bytes)
    return [DeadlineInterceptor(), DedupInterceptor(dedup, content_hash=settings.dedup_content_hash)]
