"""gRPC server bootstrap shared by every service.

`run_service` owns the process lifecycle so each service only supplies its
servicers and start/stop hooks:

1. start Prometheus metrics (HTTP, same host) and the `grpc.aio` server with
   `grpc.health.v1`, reflection and a metrics interceptor;
2. bind, run `on_start` (load state), then report SERVING and write the port
   file — a health check never sees SERVING before the service can answer;
   and, with `--registry`, register the instance (in the background: an
   unreachable registry is retried, never fatal);
3. on SIGTERM/SIGINT: deregister first, then NOT_SERVING (load balancers drain), wait
   `drain_seconds`, stop accepting and give in-flight calls `grace_seconds`,
   then run `on_stop` (flush state).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Histogram, start_http_server

from mlmesh.discovery.announce import Announcement, registry_name
from mlmesh.discovery.base import Instance
from mlmesh.files import atomic_write_json
from mlmesh.interceptors import UndecodableInterceptor, WrappingInterceptor
from mlmesh.lifeline import die_with_parent
from mlmesh.logging import configure_logging, get_logger
from mlmesh.memory import keep_large_blocks
from mlmesh.settings import ServiceSettings

RPCS = Counter("mlmesh_grpc_requests_total", "gRPC calls handled", ["service", "method", "code"])
LATENCY = Histogram(
    "mlmesh_grpc_request_seconds",
    "gRPC call latency",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def _code_name(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return str(code)


class MetricsInterceptor(WrappingInterceptor):
    """Counts calls by final status code and times them, for every RPC kind."""

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        service, _, name = method.lstrip("/").partition("/")
        latency = LATENCY.labels(service, name)
        counters: dict[str, Any] = {}  # code -> the labelled counter

        def observe(started: float, context: grpc.aio.ServicerContext, failed: str | None) -> None:
            code = _code_name(context)
            if failed and code == "OK":
                code = failed
            counter = counters.get(code)
            if counter is None:
                counter = counters[code] = RPCS.labels(service, name, code)
            counter.inc()
            latency.observe(time.perf_counter() - started)

        def wrap_unary(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def wrapped(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
                started, failed = time.perf_counter(), None
                try:
                    return await fn(request_or_iterator, context)
                except asyncio.CancelledError:
                    failed = "CANCELLED"  # the client went away
                    raise
                except BaseException:
                    failed = "UNKNOWN"
                    raise
                finally:
                    observe(started, context, failed)

            return wrapped

        def wrap_stream(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def wrapped(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
                started, failed = time.perf_counter(), None
                try:
                    async for item in fn(request_or_iterator, context):
                        yield item
                except asyncio.CancelledError:
                    failed = "CANCELLED"  # the client went away
                    raise
                except BaseException:
                    failed = "UNKNOWN"
                    raise
                finally:
                    observe(started, context, failed)

            return wrapped

        if handler.unary_unary:
            return handler._replace(unary_unary=wrap_unary(handler.unary_unary))
        if handler.stream_unary:
            return handler._replace(stream_unary=wrap_unary(handler.stream_unary))
        if handler.unary_stream:
            return handler._replace(unary_stream=wrap_stream(handler.unary_stream))
        if handler.stream_stream:
            return handler._replace(stream_stream=wrap_stream(handler.stream_stream))
        return handler


class _Capture:
    """Stands in for a server to collect a service's generated method handlers."""

    handlers: dict[str, grpc.RpcMethodHandler]

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(self, name: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.handlers = dict(handlers)


def add_service(
    server: grpc.aio.Server,
    service_name: str,
    add_generated: Callable[[Any, Any], None],
    servicer: object,
    overrides: dict[str, grpc.RpcMethodHandler],
) -> None:
    """Register a servicer through its generated `add_..._to_server`, with some methods'
    handlers replaced: those that frame their own bytes (`mlmesh.wire`) and so take or
    give raw bytes instead of messages."""
    capture = _Capture()
    add_generated(servicer, capture)
    handlers = {**capture.handlers, **overrides}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, handlers),))
    server.add_registered_method_handlers(service_name, handlers)


def write_port_file(path: Path, ports: dict[str, int]) -> None:
    """Write atomically so a reader never sees a partial file."""
    atomic_write_json(path, ports, indent=None)


def announcement(
    settings: ServiceSettings, name: str, port: int, service_names: Sequence[str], metrics_port: int
) -> Announcement | None:
    """What this server registers as (None without `--registry`): service name from
    `registry_name(name)`, health checked on its first proto service; a parameter-server
    shard carries its index in meta["shard"]."""
    if not settings.registry:
        return None
    host = settings.advertised_host()
    meta = {"metrics_port": str(metrics_port)}
    for field in ("shard_index", "num_shards", "worker_id"):
        value = getattr(settings, field, None)
        if value is not None:
            meta["shard" if field == "shard_index" else field] = str(value)
    instance = Instance(
        service=registry_name(name),
        host=host,
        port=port,
        health_service=service_names[0] if service_names else "",
        meta=meta,
    )
    return Announcement(settings.registry, instance)


def server_options(settings: ServiceSettings) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


async def run_service(
    settings: ServiceSettings,
    *,
    name: str,
    add_servicers: Callable[[grpc.aio.Server], Sequence[str]],
    on_start: Callable[[], Awaitable[None]] | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    log_context: dict[str, Any] | None = None,
    stop_event: asyncio.Event | None = None,
    install_signal_handlers: bool = True,
    health: HealthServicer | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> None:
    """Serve until SIGTERM/SIGINT (or `stop_event`), then stop gracefully.

    `add_servicers` registers the service's servicers and returns their full
    proto service names (for health and reflection). Tests that run a service
    off the main thread pass `stop_event` and `install_signal_handlers=False`.
    A service that reports health under names of its own passes its `health`
    servicer (it is registered here, and drained with the rest).
    `interceptors` run inside the metrics interceptor (which so sees their statuses).
    """
    die_with_parent()
    configure_logging(settings.log_format, settings.log_level, service=name, **(log_context or {}))
    log = get_logger(name)
    if settings.malloc_keep_mib:
        kept = keep_large_blocks(settings.malloc_keep_mib << 20, 2 * settings.malloc_keep_mib << 20)
        log.debug("malloc keeps large blocks", mib=settings.malloc_keep_mib, applied=kept)

    metrics_port = -1
    metrics_server = None
    if settings.metrics_port >= 0:
        metrics_server, _ = start_http_server(settings.metrics_port, addr=settings.host)
        metrics_port = metrics_server.server_port

    server = grpc.aio.server(
        options=server_options(settings),
        interceptors=[MetricsInterceptor(), UndecodableInterceptor(), *interceptors],
    )
    service_names = list(add_servicers(server))
    health = health or HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for svc in ["", *service_names]:
        await health.set(svc, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise SystemExit(f"could not bind {settings.host}:{settings.port}")
    await server.start()

    stop = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    if install_signal_handlers:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

    announced = announcement(settings, name, port, service_names, metrics_port)
    try:
        if on_start is not None:
            await on_start()
        for svc in ["", *service_names]:
            await health.set(svc, health_pb2.HealthCheckResponse.SERVING)
        if settings.port_file is not None:
            write_port_file(
                settings.port_file, {"port": port, "metrics_port": metrics_port, "pid": os.getpid()}
            )
        log.info("serving", addr=f"{settings.host}:{port}", metrics_port=metrics_port, services=service_names)
        if announced is not None:
            announced.start()
        await stop.wait()
        if announced is not None:  # before NOT_SERVING: watchers stop sending here first
            await announced.withdraw()
        log.info("stopping", drain_seconds=settings.drain_seconds, grace_seconds=settings.grace_seconds)
        await health.enter_graceful_shutdown()
        if settings.drain_seconds > 0:
            await asyncio.sleep(settings.drain_seconds)
        await server.stop(settings.grace_seconds)
    finally:
        if announced is not None:
            await announced.withdraw()
        if on_stop is not None:
            await on_stop()
        await server.stop(0)
        if metrics_server is not None:
            metrics_server.shutdown()
        if settings.port_file is not None:
            settings.port_file.unlink(missing_ok=True)
        log.info("stopped")
