"""Fixtures: an in-process coordinator (real servicer, real grpc.aio server on
an ephemeral loopback port, its own thread and event loop) and a sync stub."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from mlmesh.channels import sync_channel
from mlmesh.trainer.v1 import trainer_pb2_grpc

from trainer_svc.clients import CallPolicy, IngestClient, ParamClient
from trainer_svc.core.coordinator import Coordinator, CoordinatorConfig
from trainer_svc.core.store import JobStore
from trainer_svc.servicer import TrainerServicer

T = TypeVar("T")
# Nothing listens here: peers are unreachable, and calls fail fast (no retries).
DEAD_ADDR = "127.0.0.1:9"


class CoordinatorServer:
    """A TrainerServicer over a real Coordinator, served on its own event loop thread."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.port = 0
        self.coordinator: Coordinator | None = None
        self._loop = asyncio.new_event_loop()
        self._server: grpc.aio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="coordinator-test", daemon=True)

    def start(self) -> CoordinatorServer:
        self._thread.start()
        self.run(self._start())
        return self

    async def _start(self) -> None:
        policy = CallPolicy(timeout=2.0, retry_seconds=0.0)
        config = CoordinatorConfig(
            ingest_addr=DEAD_ADDR, ps_addrs=(DEAD_ADDR, DEAD_ADDR), model_repo=self.work_dir / "repo"
        )
        self.coordinator = Coordinator(
            config,
            JobStore(self.work_dir),
            IngestClient(DEAD_ADDR, policy),
            ParamClient([DEAD_ADDR] * 2, policy),
        )
        self.coordinator.load()
        self._server = grpc.aio.server()
        trainer_pb2_grpc.add_TrainerServiceServicer_to_server(TrainerServicer(self.coordinator), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()

    def run(self, coro: Awaitable[T], timeout: float = 60.0) -> T:
        """Run a coroutine on the server's loop (where the coordinator lives)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    def call(self, fn: Callable[[], T]) -> T:
        """Run plain code on the server's loop thread (the coordinator is not thread-safe)."""

        async def wrapper() -> T:
            return fn()

        return self.run(wrapper())

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                await self._server.stop(0)
            if self.coordinator is not None:
                await self.coordinator.close()

        try:
            self.run(shutdown(), timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()


@pytest.fixture
def coordinator_server(tmp_path: Path) -> Iterator[CoordinatorServer]:
    server = CoordinatorServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def trainer(coordinator_server: CoordinatorServer) -> Iterator[Any]:
    with sync_channel(f"127.0.0.1:{coordinator_server.port}") as channel:
        yield trainer_pb2_grpc.TrainerServiceStub(channel)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The real cluster with data loaded (skips without the Fashion-MNIST files)."""
    from examples.tabular.generate import generate
    from examples.tabular.upload import upload as upload_churn
    from trainer_svc.tests import cluster as cl
    from trainer_svc.tests import procs

    if not procs.fashion_available():
        pytest.skip(
            f"Fashion-MNIST not found under {procs.FASHION_DIR} (Debian package dataset-fashion-mnist)"
        )
    c = cl.start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        stub = c.ingest_stub()
        cl.upload(stub, cl.FASHION_TRAIN, procs.load_fashion("train", 3000))
        cl.upload(stub, cl.FASHION_TEST, procs.load_fashion("test", 1000))
        assert c.ingest is not None
        upload_churn(c.channel(c.ingest.addr), generate(10_000, seed=3), name="churn")
        yield c
    finally:
        c.stop()
