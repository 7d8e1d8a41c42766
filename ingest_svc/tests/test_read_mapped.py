"""Partitions stay mapped between reads; checksums are still verified on every read, and a
file changed on disk after a read is seen as such."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import numpy as np
import pytest
from mlmesh.ingest.v1 import ingest_pb2

from ingest_svc.core.files import read_partition, write_partition
from ingest_svc.core.mapped import MappedPartitions, identity
from ingest_svc.core.schema import FeatureSpec, Schema
from ingest_svc.tests.conftest import (
    mnist_like,
    read_all,
    rpc_error,
)

pytestmark = pytest.mark.unit


def read_error(stub, partition_id: int) -> grpc.RpcError:
    return rpc_error(
        lambda r, timeout: list(stub.ReadPartition(r, timeout=timeout)),
        ingest_pb2.ReadPartitionRequest(dataset="ds", partition_id=partition_id),
    )


def test_repeated_reads_are_served_from_one_kept_mapping(stub, server, filled) -> None:
    for _ in range(3):
        cols, _ = read_all(stub, "ds", 1)
        np.testing.assert_array_equal(cols["label"], filled["label"][10:20])
        np.testing.assert_array_equal(cols["image"], filled["image"][10:20])
    assert len(server.core.catalog.mapped) == 1


def test_damage_in_place_that_keeps_the_files_identity_is_still_data_loss(stub, filled, data_dir) -> None:
    """Checksums are verified on every read, not once per mapping: a flipped byte under an
    unchanged inode, size and mtime (as a disk damages a file) is caught on the next read."""
    read_all(stub, "ds", 1)
    path = data_dir / "datasets" / "ds" / "part-00000001.bin"
    before = os.stat(path)
    image_at = read_partition(path, Schema.build(_MNIST)).offsets["image"]
    with open(path, "r+b") as f:
        f.seek(image_at + 5)
        byte = f.read(1)
        f.seek(image_at + 5)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    err = read_error(stub, 1)
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert "checksum mismatch in feature 'image', records 0-9" in err.details()


def test_a_file_deleted_after_a_read_is_data_loss_naming_it_missing(stub, filled, data_dir) -> None:
    read_all(stub, "ds", 2)
    (data_dir / "datasets" / "ds" / "part-00000002.bin").unlink()
    err = read_error(stub, 2)
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert "missing" in err.details()


def test_a_file_replaced_after_a_read_is_read_afresh(stub, filled, data_dir) -> None:
    read_all(stub, "ds", 0)
    path = data_dir / "datasets" / "ds" / "part-00000000.bin"
    short = path.with_name("short")
    short.write_bytes(path.read_bytes()[:-100])
    short.replace(path)
    err = read_error(stub, 0)
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert "truncated" in err.details()


_MNIST = [FeatureSpec("image", "uint8", (28, 28)), FeatureSpec("label", "int64", ())]


def test_the_kept_mappings_are_bounded_least_recently_read_out_first(tmp_path: Path) -> None:
    schema = Schema.build(_MNIST)
    mapped = MappedPartitions(capacity=2)
    paths = []
    for i in range(3):
        path = tmp_path / f"p{i}"
        data = mnist_like(2, start=i)
        write_partition(path, schema, {k: [v] for k, v in data.items()}, 2)
        paths.append(path)
        mapped.put(("ds", i), read_partition(path, schema), identity(path))
        if i == 1:
            assert mapped.get(("ds", 0), paths[0]) is not None  # 0 is now the most recent
    assert len(mapped) == 2
    assert mapped.get(("ds", 1), paths[1]) is None  # evicted
    assert mapped.get(("ds", 0), paths[0]) is not None
    assert mapped.get(("ds", 2), paths[2]) is not None


def test_a_hit_starts_with_no_block_verified(tmp_path: Path) -> None:
    schema = Schema.build(_MNIST)
    path = tmp_path / "p"
    data = mnist_like(3)
    write_partition(path, schema, {k: [v] for k, v in data.items()}, 3)
    mapped = MappedPartitions()
    first = read_partition(path, schema)
    first.verify(0, 3)
    mapped.put(("ds", 0), first, identity(path))
    again = mapped.get(("ds", 0), path)
    assert again is not None and again.buffer is first.buffer
    assert again._verified == set() and first._verified == {0}
