"""ListPartitions and ReadPartition through a real channel; the partition file format."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from mlmesh.channels import sync_channel
from mlmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from mlmesh.tensor import dtype_code, to_proto

from ingest_svc.core.files import CorruptPartition, read_partition, write_partition
from ingest_svc.core.schema import FeatureSpec, Schema
from ingest_svc.tests.conftest import (
    MNIST_RECORD_BYTES,
    InProcessServer,
    append_requests,
    create_mnist,
    make_core,
    mnist_like,
    read_all,
    rpc_error,
)

pytestmark = pytest.mark.unit


def test_list_partitions_in_id_order(stub, filled) -> None:
    parts = stub.ListPartitions(ingest_pb2.ListPartitionsRequest(dataset="ds"), timeout=30).partitions
    assert [(p.dataset, p.partition_id, p.num_records) for p in parts] == [
        ("ds", 0, 10),
        ("ds", 1, 10),
        ("ds", 2, 5),
    ]
    assert all(p.num_bytes == p.num_records * MNIST_RECORD_BYTES and p.created_unix > 0 for p in parts)


def test_list_partitions_of_unknown_dataset_is_not_found(stub) -> None:
    err = rpc_error(stub.ListPartitions, ingest_pb2.ListPartitionsRequest(dataset="nope"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_read_returns_the_partitions_records_exactly(stub, filled) -> None:
    cols, sizes = read_all(stub, "ds", 1)
    np.testing.assert_array_equal(cols["image"], filled["image"][10:20])
    np.testing.assert_array_equal(cols["label"], filled["label"][10:20])
    assert cols["image"].dtype == np.uint8 and cols["label"].dtype == np.int64
    assert sizes == [10]  # batch_size 0: ~1 MiB batches, so the whole small partition


def test_read_streams_batches_of_batch_size(stub, filled) -> None:
    cols, sizes = read_all(stub, "ds", 0, batch_size=4)
    assert sizes == [4, 4, 2]
    np.testing.assert_array_equal(cols["label"], np.arange(10))


def test_default_batches_are_about_one_mib(stub) -> None:
    create_mnist(stub, "big")
    stub.Append(append_requests("big", mnist_like(3000), per_message=1000), timeout=30)
    _, sizes = read_all(stub, "big", 0)
    per_mib = (1 << 20) // MNIST_RECORD_BYTES
    assert sizes == [per_mib, per_mib, 3000 - 2 * per_mib]


def test_read_unknown_dataset_is_not_found(stub) -> None:
    err = rpc_error(
        lambda r, timeout: list(stub.ReadPartition(r, timeout=timeout)),
        ingest_pb2.ReadPartitionRequest(dataset="nope", partition_id=0),
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_read_unknown_partition_is_not_found(stub, filled) -> None:
    err = rpc_error(
        lambda r, timeout: list(stub.ReadPartition(r, timeout=timeout)),
        ingest_pb2.ReadPartitionRequest(dataset="ds", partition_id=3),
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "no partition 3 (it has 3 partitions)" in err.details()


def test_read_negative_partition_id_is_invalid_argument(stub, filled) -> None:
    err = rpc_error(
        lambda r, timeout: list(stub.ReadPartition(r, timeout=timeout)),
        ingest_pb2.ReadPartitionRequest(dataset="ds", partition_id=-1),
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "partition_id is -1" in err.details()


def test_read_negative_batch_size_is_invalid_argument(stub, filled) -> None:
    err = rpc_error(
        lambda r, timeout: list(stub.ReadPartition(r, timeout=timeout)),
        ingest_pb2.ReadPartitionRequest(dataset="ds", partition_id=0, batch_size=-5),
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch_size is -5" in err.details()


def test_batch_over_the_message_limit_is_invalid_argument(data_dir) -> None:
    core = make_core(data_dir)
    srv = InProcessServer(core, max_message_bytes=128 * 1024).start()
    channel = sync_channel(f"127.0.0.1:{srv.port}")
    try:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        create_mnist(stub, "ds")
        stub.Append(append_requests("ds", mnist_like(200), per_message=50), timeout=30)
        err = rpc_error(
            lambda r, timeout: list(stub.ReadPartition(r, timeout=timeout)),
            ingest_pb2.ReadPartitionRequest(dataset="ds", partition_id=0, batch_size=200),
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "over the 131072-byte message limit; use at most 155" in err.details()
        _, sizes = read_all(stub, "ds", 0, batch_size=80)
        assert sizes == [80, 80, 40]
        _, sizes = read_all(stub, "ds", 0)  # batch_size 0: the server picks what fits
        assert sizes == [155, 45]
        # A message bigger than the server accepts is refused by gRPC itself.
        err = rpc_error(stub.Append, append_requests("ds", mnist_like(200), per_message=200))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        channel.close()
        srv.stop()
        core.close()


def test_corrupt_partition_file_is_data_loss(stub, filled, data_dir) -> None:
    path = data_dir / "datasets" / "ds" / "part-00000001.bin"
    path.write_bytes(path.read_bytes()[:-100])
    err = rpc_error(
        lambda r, timeout: list(stub.ReadPartition(r, timeout=timeout)),
        ingest_pb2.ReadPartitionRequest(dataset="ds", partition_id=1),
    )
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert "truncated" in err.details()
    path.unlink()
    err = rpc_error(
        lambda r, timeout: list(stub.ReadPartition(r, timeout=timeout)),
        ingest_pb2.ReadPartitionRequest(dataset="ds", partition_id=1),
    )
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert "missing" in err.details()


# -- the file format itself ----------------------------------------------------------


def test_partition_file_round_trips_every_dtype_and_odd_shapes(tmp_path) -> None:
    rng = np.random.default_rng(0)
    schema = Schema.build(
        [
            FeatureSpec("b", "bool", (3,)),
            FeatureSpec("h", "float16", (2, 5)),
            FeatureSpec("f", "float32", ()),
            FeatureSpec("d", "float64", (1,)),
            FeatureSpec("i8", "int8", (7,)),
            FeatureSpec("i16", "int16", (3,)),
            FeatureSpec("i32", "int32", (2,)),
            FeatureSpec("i64", "int64", ()),
            FeatureSpec("u8", "uint8", (4, 4)),
            FeatureSpec("empty", "float32", (0, 3)),
        ]
    )
    n = 11
    cols = {f.name: (rng.random((n, *f.shape)) * 100).astype(f.dtype) for f in schema.features}
    # Written from two pieces per feature, as an Append stream hands them over.
    pieces = {k: [v[:4], v[4:]] for k, v in cols.items()}
    path = tmp_path / "p.bin"
    nbytes = write_partition(path, schema, pieces, n)
    assert nbytes == n * schema.record_bytes
    data = read_partition(path, schema)
    assert data.num_records == n
    for f in schema.features:
        np.testing.assert_array_equal(data.column(f.name), cols[f.name])
        assert data.offsets[f.name] % 64 == 0


def test_reading_a_file_with_another_schema_is_detected(tmp_path) -> None:
    schema = Schema.build([FeatureSpec("x", "float32", (2,))])
    path = tmp_path / "p.bin"
    write_partition(path, schema, {"x": [np.zeros((3, 2), np.float32)]}, 3)
    with pytest.raises(CorruptPartition, match="schema"):
        read_partition(path, Schema.build([FeatureSpec("x", "float64", (2,))]))
    path.write_bytes(b"garbage")
    with pytest.raises(CorruptPartition, match="magic"):
        read_partition(path, schema)


def test_to_proto_round_trip_used_by_clients(stub) -> None:
    """A bool/float16 dataset goes through Append and ReadPartition unchanged."""
    schema = ingest_pb2.DatasetSchema(
        features=[
            ingest_pb2.FeatureSpec(name="mask", dtype=dtype_code("bool"), shape=[5]),
            ingest_pb2.FeatureSpec(name="emb", dtype=dtype_code("float16"), shape=[3]),
        ]
    )
    stub.CreateDataset(ingest_pb2.CreateDatasetRequest(name="odd", schema=schema), timeout=30)
    data = {
        "mask": np.arange(20).reshape(4, 5) % 3 == 0,
        "emb": np.linspace(0, 1, 12, dtype=np.float16).reshape(4, 3),
    }
    req = ingest_pb2.AppendRequest(
        dataset="odd", batch=ingest_pb2.RecordBatch(features={k: to_proto(v) for k, v in data.items()})
    )
    stub.Append(iter([req]), timeout=30)
    cols, _ = read_all(stub, "odd", 0)
    for k, v in data.items():
        np.testing.assert_array_equal(cols[k], v)


def test_a_flipped_byte_on_disk_is_data_loss_and_its_block_is_never_sent(stub, data_dir) -> None:
    """Records are checksummed in blocks of ~1 MiB; a reader gets every block before the
    damaged one, then DATA_LOSS naming the feature and records, and never the bad bytes."""
    create_mnist(stub, "big")
    data = mnist_like(4000)
    stub.Append(append_requests("big", data, per_message=1000), timeout=30)
    per_block = (1 << 20) // MNIST_RECORD_BYTES  # records per checksummed block
    path = data_dir / "datasets" / "big" / "part-00000000.bin"
    schema = Schema.build([FeatureSpec("image", "uint8", (28, 28)), FeatureSpec("label", "int64", ())])
    image_at = read_partition(path, schema).offsets["image"]
    raw = bytearray(path.read_bytes())
    raw[image_at + (per_block + 7) * 28 * 28 + 100] ^= 0xFF  # record per_block + 7, in block 1
    path.write_bytes(bytes(raw))

    got: list[np.ndarray] = []
    # 1,323 records a block = 3 batches of 441.
    req = ingest_pb2.ReadPartitionRequest(dataset="big", partition_id=0, batch_size=per_block // 3)
    with pytest.raises(grpc.RpcError) as info:
        for resp in stub.ReadPartition(req, timeout=30):
            got.append(np.frombuffer(resp.batch.features["label"].content, dtype=np.int64))
    assert info.value.code() == grpc.StatusCode.DATA_LOSS
    assert (
        f"checksum mismatch in feature 'image', records {per_block}-{2 * per_block - 1}"
        in info.value.details()
    )
    labels = np.concatenate(got)
    assert len(labels) == per_block  # block 0 only: nothing of the damaged block left the server
    np.testing.assert_array_equal(labels, data["label"][:per_block])


def test_checksums_cover_every_block_and_feature(tmp_path) -> None:
    schema = Schema.build([FeatureSpec("x", "float32", (300,)), FeatureSpec("y", "int64", ())])
    n = 2500  # 1,208 bytes a record: 868 records a block, so 3 blocks, the last short
    cols = {"x": np.random.default_rng(1).random((n, 300), dtype=np.float32), "y": np.arange(n)}
    path = tmp_path / "p.bin"
    write_partition(path, schema, {k: [v[:1000], v[1000:]] for k, v in cols.items()}, n)
    data = read_partition(path, schema)
    assert data.block_records == (1 << 20) // 1208
    assert {k: len(v) for k, v in data.crcs.items()} == {"x": 3, "y": 3}
    data.verify(0, n)  # intact
    for feature, record in (("x", 0), ("y", n - 1), ("x", 1800)):
        raw = bytearray(path.read_bytes())
        rb = schema.feature(feature).record_bytes
        raw[data.offsets[feature] + record * rb] ^= 0x01
        bad = tmp_path / f"bad-{feature}-{record}.bin"
        bad.write_bytes(bytes(raw))
        damaged = read_partition(bad, schema)
        block = record // damaged.block_records
        others = [b for b in range(3) if b != block]
        for b in others:  # the intact blocks still read
            damaged.verify(b * damaged.block_records, (b + 1) * damaged.block_records)
        with pytest.raises(CorruptPartition, match=f"feature '{feature}'"):
            damaged.verify(record, record + 1)
        with pytest.raises(CorruptPartition, match="checksum mismatch"):
            damaged.column(feature)


def test_a_partition_of_an_older_format_is_refused_by_name(tmp_path) -> None:
    schema = Schema.build([FeatureSpec("x", "float32", ())])
    path = tmp_path / "p.bin"
    write_partition(path, schema, {"x": [np.zeros(3, np.float32)]}, 3)
    raw = bytearray(path.read_bytes())
    raw[:8] = b"MLMPART1"
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptPartition, match="partition format '1'; this build reads '2'"):
        read_partition(path, schema)
