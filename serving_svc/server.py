"""Wiring: settings → source, manager, servicer → run_service."""

from __future__ import annotations

import asyncio

import grpc
from mlmesh.server import run_service
from mlmesh.serving.v1 import serving_pb2_grpc

from serving_svc import tfs_servicer
from serving_svc.config import ServingSettings
from serving_svc.core.manager import BatchingOptions, ModelManager
from serving_svc.core.source import RepositorySource
from serving_svc.servicer import SERVICE_NAME, ServingServicer


def build(settings: ServingSettings) -> tuple[ModelManager, ServingServicer]:
    """The manager and the servicer over it; both must be used on one event loop."""
    manager = ModelManager(
        RepositorySource(settings.model_repo, settings.model_name_list),
        poll_seconds=settings.poll_seconds,
        batching=BatchingOptions(
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_batch_wait_ms / 1000.0,
            max_queue=settings.max_queue,
        ),
        warmup=settings.warmup,
        model_threads=settings.model_threads,
    )
    return manager, ServingServicer(manager, max_request_examples=settings.max_request_examples)


async def serve(settings: ServingSettings, stop_event: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or `stop_event`). Versions present at start
    are loaded before the port file is written; later ones load in the background."""
    manager, servicer = build(settings)

    def add_servicers(server: grpc.aio.Server) -> list[str]:
        serving_pb2_grpc.add_ServingServiceServicer_to_server(servicer, server)
        # TF Serving's own API (tensorflow.serving.PredictionService, ModelService) beside ours.
        tfs_names = tfs_servicer.add_to_server(
            manager, server, max_request_examples=settings.max_request_examples
        )
        return [SERVICE_NAME, *tfs_names]

    await run_service(
        settings,
        name="serving_svc",
        add_servicers=add_servicers,
        on_start=manager.start,
        on_stop=manager.stop,
        log_context={"model_repo": str(settings.model_repo)},
        stop_event=stop_event,
    )
