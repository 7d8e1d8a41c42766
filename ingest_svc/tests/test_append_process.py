"""Append against a real `python -m ingest_svc` process that runs out of room."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from mlmesh.channels import sync_channel
from mlmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc

from ingest_svc.tests.conftest import MNIST_RECORD_BYTES, append_requests, create_mnist, mnist_like
from ingest_svc.tests.process import IngestProcess

pytestmark = pytest.mark.faults

LIMIT = 512 * 1024


@pytest.fixture
def proc(tmp_path: Path) -> Iterator[IngestProcess]:
    p = IngestProcess(tmp_path / "data", tmp_path / "run").start()
    try:
        yield p
    finally:
        p.close()


def test_file_size_limit_during_append_is_resource_exhausted_and_leaves_nothing(proc: IngestProcess) -> None:
    channel = sync_channel(proc.addr)
    stub = ingest_pb2_grpc.IngestServiceStub(channel)
    try:
        create_mnist(stub, "ds", max_partition_bytes=1024 * 1024)
        stub.Append(append_requests("ds", mnist_like(100), per_message=50), timeout=30)
        # Python ignores SIGXFSZ, so a write past RLIMIT_FSIZE fails with EFBIG, as a full disk
        # fails with ENOSPC; no root (no tiny tmpfs) needed.
        assert proc.proc is not None
        # Soft limit only, so it can be raised again without privilege.
        _, hard = resource.prlimit(proc.proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(proc.proc.pid, resource.RLIMIT_FSIZE, (LIMIT, hard))
        records = 2 * 1024 * 1024 // MNIST_RECORD_BYTES  # two partitions of about 1 MiB
        with pytest.raises(grpc.RpcError) as info:
            stub.Append(append_requests("ds", mnist_like(records, start=100), per_message=256), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "dataset 'ds'" in info.value.details() and "File too large" in info.value.details()
        files = sorted(p.name for p in (proc.data_dir / "datasets" / "ds").iterdir())
        assert files == ["part-00000000.bin"]
        d = stub.GetDataset(ingest_pb2.GetDatasetRequest(name="ds"), timeout=30).dataset
        assert (d.num_records, d.num_partitions) == (100, 1)
        # With room again, the same process appends: nothing was left half done.
        resource.prlimit(proc.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
        resp = stub.Append(append_requests("ds", mnist_like(records, start=100), per_message=256), timeout=30)
        assert resp.records_appended == records and [p.partition_id for p in resp.partitions] == [1, 2, 3]
    finally:
        channel.close()
