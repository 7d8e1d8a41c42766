"""Fixtures: an in-process ingest server on an ephemeral port, and helpers to talk to it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from mlmesh.channels import sync_channel
from mlmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from mlmesh.tensor import dtype_code, from_proto, to_proto

from ingest_svc.core.ingest import IngestCore
from ingest_svc.servicer import IngestServicer, add_to_server

MNIST_SCHEMA = ingest_pb2.DatasetSchema(
    features=[
        ingest_pb2.FeatureSpec(name="image", dtype=dtype_code("uint8"), shape=[28, 28]),
        ingest_pb2.FeatureSpec(name="label", dtype=dtype_code("int64"), shape=[]),
    ]
)
MNIST_RECORD_BYTES = 28 * 28 + 8


def mnist_like(n: int, start: int = 0) -> dict[str, np.ndarray]:
    """Deterministic records: record i has label i and image bytes derived from i."""
    idx = np.arange(start, start + n, dtype=np.int64)
    image = ((idx[:, None, None] * 7 + np.arange(28 * 28).reshape(1, 28, 28)) % 256).astype(np.uint8)
    return {"image": image, "label": idx}


def batch(arrays: dict[str, np.ndarray]) -> ingest_pb2.RecordBatch:
    return ingest_pb2.RecordBatch(features={k: to_proto(v) for k, v in arrays.items()})


def append_requests(
    dataset: str, arrays: dict[str, np.ndarray], per_message: int
) -> Iterator[ingest_pb2.AppendRequest]:
    n = len(next(iter(arrays.values())))
    for i, start in enumerate(range(0, n, per_message)):
        chunk = {k: v[start : start + per_message] for k, v in arrays.items()}
        yield ingest_pb2.AppendRequest(dataset=dataset if i == 0 else "", batch=batch(chunk))


def read_all(stub: ingest_pb2_grpc.IngestServiceStub, dataset: str, partition_id: int, batch_size: int = 0):
    """All records of a partition, concatenated per feature, and the batch sizes seen."""
    cols: dict[str, list[np.ndarray]] = {}
    sizes = []
    for resp in stub.ReadPartition(
        ingest_pb2.ReadPartitionRequest(dataset=dataset, partition_id=partition_id, batch_size=batch_size),
        timeout=30,
    ):
        for name, t in resp.batch.features.items():
            cols.setdefault(name, []).append(from_proto(t, name))
        sizes.append(int(next(iter(resp.batch.features.values())).shape[0]))
    return {k: np.concatenate(v) for k, v in cols.items()}, sizes


class InProcessServer:
    """An ingest servicer in a grpc.aio server on its own thread and event loop."""

    def __init__(self, core: IngestCore, max_message_bytes: int = 64 * 1024 * 1024) -> None:
        self.core = core
        self.max_message_bytes = max_message_bytes
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ingest-test-server", daemon=True)

    def start(self) -> InProcessServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("in-process ingest server did not start in 10 s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # surfaced by start()
            self._error = e
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        opts = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
        ]
        server = grpc.aio.server(options=opts)
        add_to_server(IngestServicer(self.max_message_bytes, self.core), server)
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.stop(0)


def make_core(data_dir: Path, **overrides: float) -> IngestCore:
    kw = {
        "default_max_partition_bytes": 8 * 1024 * 1024,
        "default_lease_seconds": 30.0,
        "max_lease_seconds": 3600.0,
    }
    kw.update(overrides)
    return IngestCore(data_dir, **kw)  # type: ignore[arg-type]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "ingest"


@pytest.fixture
def server(data_dir: Path) -> Iterator[InProcessServer]:
    core = make_core(data_dir)
    core.recover()
    srv = InProcessServer(core).start()
    try:
        yield srv
    finally:
        srv.stop()
        core.close()


@pytest.fixture
def stub(server: InProcessServer) -> Iterator[ingest_pb2_grpc.IngestServiceStub]:
    channel = sync_channel(f"127.0.0.1:{server.port}")
    try:
        yield ingest_pb2_grpc.IngestServiceStub(channel)
    finally:
        channel.close()


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:
    """Call and return the RpcError it must raise."""
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, timeout=30, **kwargs)
    return info.value


def create_mnist(stub: ingest_pb2_grpc.IngestServiceStub, name: str, max_partition_bytes: int = 0):
    return stub.CreateDataset(
        ingest_pb2.CreateDatasetRequest(
            name=name, schema=MNIST_SCHEMA, max_partition_bytes=max_partition_bytes
        ),
        timeout=30,
    )


@pytest.fixture
def filled(stub):
    """Dataset 'ds': 25 records in partitions of 10, 10, 5."""
    create_mnist(stub, "ds", max_partition_bytes=10 * MNIST_RECORD_BYTES)
    data = mnist_like(25)
    stub.Append(append_requests("ds", data, per_message=6), timeout=30)
    return data
