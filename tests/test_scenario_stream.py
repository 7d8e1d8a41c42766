"""The scenario's streamer against a real ingest process: one partition per chunk, in
simulated-time order, paced by the wall clock, the readings exactly the simulator's."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mlmesh.channels import sync_channel
from mlmesh.clients import IngestClient
from mlmesh.data.train_failures import SCHEMA, FleetSimulator
from mlmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from mlmesh.scenarios.stream import FleetStreamer, partition_bytes_for_chunk, raw_schema
from mlmesh.tensor import from_proto

from ingest_svc.tests.process import IngestProcess

pytestmark = pytest.mark.integration

COMPONENTS, CHUNK = 16, 60


@pytest.fixture
def ingest(tmp_path: Path) -> Iterator[IngestProcess]:
    proc = IngestProcess(tmp_path / "data", tmp_path / "run").start()
    try:
        yield proc
    finally:
        proc.close()


def read_partitions(addr: str, dataset: str) -> list[dict[str, np.ndarray]]:
    stub = ingest_pb2_grpc.IngestServiceStub(sync_channel(addr))
    parts = stub.ListPartitions(ingest_pb2.ListPartitionsRequest(dataset=dataset), timeout=30).partitions
    out = []
    for p in sorted(parts, key=lambda p: p.partition_id):
        batches = [
            {k: from_proto(v) for k, v in resp.batch.features.items()}
            for resp in stub.ReadPartition(
                ingest_pb2.ReadPartitionRequest(dataset=dataset, partition_id=p.partition_id), timeout=30
            )
        ]
        out.append({k: np.concatenate([b[k] for b in batches]) for k in batches[0]})
    return out


def test_the_streamer_appends_one_partition_per_chunk_at_the_paced_rate(ingest: IngestProcess) -> None:
    with IngestClient(ingest.addr) as client:
        client.create_dataset("raw", raw_schema(), partition_bytes_for_chunk(COMPONENTS, CHUNK))
    stop = threading.Event()
    # 120 simulated minutes per wall second: a 60-minute chunk every 0.5 s.
    streamer = FleetStreamer(
        ingest.addr, "raw", FleetSimulator(COMPONENTS, seed=7),
        chunk_minutes=CHUNK, simulated_minutes_per_second=120.0, stop=stop,
    )  # fmt: skip
    started = time.monotonic()
    streamer.start()
    time.sleep(2.3)  # chunks due at 0.5, 1.0, 1.5, 2.0 s
    stop.set()
    streamer.join(timeout=30)
    assert streamer.error is None
    stats = streamer.stats()
    assert 3 <= stats.chunks <= 5  # paced, not as fast as possible (loaded machines run late)
    assert stats.simulated_minutes == stats.chunks * CHUNK
    assert time.monotonic() - started >= stats.chunks * 0.5

    parts = read_partitions(ingest.addr, "raw")
    assert len(parts) == stats.chunks  # a partition per chunk
    expected = FleetSimulator(COMPONENTS, seed=7)
    for part in parts:  # in order, each exactly the simulator's next hour
        chunk = expected.next_chunk(CHUNK)
        assert set(part) == set(SCHEMA)
        for name, values in chunk.items():
            np.testing.assert_array_equal(part[name], values)
    assert stats.records == sum(len(p["t"]) for p in parts) == stats.chunks * CHUNK * COMPONENTS


def test_a_failed_append_ends_the_streamer_and_is_kept(ingest: IngestProcess) -> None:
    stop = threading.Event()
    streamer = FleetStreamer(
        ingest.addr, "no-such-dataset", FleetSimulator(4), chunk_minutes=CHUNK,
        simulated_minutes_per_second=600.0, stop=stop,
    )  # fmt: skip
    streamer.start()
    streamer.join(timeout=30)
    assert not streamer.is_alive()
    assert streamer.error is not None and "no-such-dataset" in str(streamer.error)
    assert streamer.stats().chunks == 0
