"""Append: cutting into partitions, validation of every message, all-or-nothing."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from mlmesh.ingest.v1 import ingest_pb2
from mlmesh.tensor import dtype_code, to_proto
from mlmesh.types.v1 import tensor_pb2

from ingest_svc.core import append as append_module
from ingest_svc.servicer import WRITE_AHEAD_BYTES, WRITERS, writers_for
from ingest_svc.tests.conftest import (
    MNIST_RECORD_BYTES,
    append_requests,
    batch,
    create_mnist,
    mnist_like,
    read_all,
    rpc_error,
)

pytestmark = pytest.mark.unit

SMALL = 4096  # 5 MNIST-like records per partition


def files_of(data_dir: Path, dataset: str) -> list[str]:
    return sorted(p.name for p in (data_dir / "datasets" / dataset).iterdir())


def append(stub, requests) -> ingest_pb2.AppendResponse:
    return stub.Append(iter(list(requests)), timeout=30)


def test_append_cuts_records_into_bounded_partitions_in_order(stub, data_dir) -> None:
    create_mnist(stub, "ds", max_partition_bytes=SMALL)
    data = mnist_like(23)
    resp = append(stub, append_requests("ds", data, per_message=4))
    assert resp.dataset == "ds" and resp.records_appended == 23
    per = SMALL // MNIST_RECORD_BYTES
    assert [p.num_records for p in resp.partitions] == [per] * 4 + [3]
    assert [p.partition_id for p in resp.partitions] == [0, 1, 2, 3, 4]
    assert all(p.num_bytes == p.num_records * MNIST_RECORD_BYTES <= SMALL for p in resp.partitions)
    labels = np.concatenate([read_all(stub, "ds", p.partition_id)[0]["label"] for p in resp.partitions])
    np.testing.assert_array_equal(labels, data["label"])
    assert files_of(data_dir, "ds") == [f"part-{i:08d}.bin" for i in range(5)]


def test_append_updates_dataset_totals(stub) -> None:
    create_mnist(stub, "ds", max_partition_bytes=SMALL)
    append(stub, append_requests("ds", mnist_like(7), per_message=7))
    append(stub, append_requests("ds", mnist_like(3, start=7), per_message=3))
    d = stub.GetDataset(ingest_pb2.GetDatasetRequest(name="ds"), timeout=30).dataset
    assert (d.num_records, d.num_partitions, d.num_bytes) == (10, 3, 10 * MNIST_RECORD_BYTES)


def test_a_second_stream_starts_new_partitions_after_the_existing_ones(stub) -> None:
    create_mnist(stub, "ds", max_partition_bytes=SMALL)
    append(stub, append_requests("ds", mnist_like(2), per_message=2))
    resp = append(stub, append_requests("ds", mnist_like(2, start=2), per_message=2))
    assert [p.partition_id for p in resp.partitions] == [1]
    parts = stub.ListPartitions(ingest_pb2.ListPartitionsRequest(dataset="ds"), timeout=30).partitions
    assert [(p.partition_id, p.num_records) for p in parts] == [(0, 2), (1, 2)]


def test_messages_may_repeat_the_dataset_name_or_carry_no_batch(stub) -> None:
    create_mnist(stub, "ds")
    reqs = [
        ingest_pb2.AppendRequest(dataset="ds"),
        ingest_pb2.AppendRequest(dataset="ds", batch=batch(mnist_like(2))),
        ingest_pb2.AppendRequest(batch=batch(mnist_like(0))),
        ingest_pb2.AppendRequest(batch=batch(mnist_like(1, start=2))),
    ]
    assert append(stub, reqs).records_appended == 3


def test_stream_without_records_commits_nothing(stub) -> None:
    create_mnist(stub, "ds")
    resp = append(stub, [ingest_pb2.AppendRequest(dataset="ds")])
    assert resp.records_appended == 0 and list(resp.partitions) == []


def test_concurrent_streams_to_one_dataset_get_distinct_partition_ids(stub) -> None:
    create_mnist(stub, "ds", max_partition_bytes=SMALL)
    results: list[ingest_pb2.AppendResponse] = []
    errors: list[BaseException] = []

    def run(start: int) -> None:
        try:
            results.append(append(stub, append_requests("ds", mnist_like(20, start=start), per_message=2)))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i * 100,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    ids = sorted(p.partition_id for r in results for p in r.partitions)
    assert ids == list(range(16))
    labels = set()
    for pid in ids:
        labels.update(read_all(stub, "ds", pid)[0]["label"].tolist())
    assert labels == {s + i for s in (0, 100, 200, 300) for i in range(20)}


# -- bad streams: exact status, and nothing kept ------------------------------------


def test_empty_stream_is_invalid_argument(stub) -> None:
    err = rpc_error(stub.Append, iter([]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "empty" in err.details()


def test_first_message_without_dataset_is_invalid_argument(stub) -> None:
    create_mnist(stub, "ds")
    err = rpc_error(stub.Append, iter([ingest_pb2.AppendRequest(batch=batch(mnist_like(1)))]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "first Append message must name the dataset" in err.details()


def test_unknown_dataset_is_not_found(stub) -> None:
    err = rpc_error(stub.Append, iter([ingest_pb2.AppendRequest(dataset="nope", batch=batch(mnist_like(1)))]))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "'nope' not found" in err.details()


def test_invalid_dataset_name_is_invalid_argument(stub) -> None:
    err = rpc_error(stub.Append, iter([ingest_pb2.AppendRequest(dataset="Bad Name")]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_later_message_naming_another_dataset_is_invalid_argument(stub, data_dir) -> None:
    create_mnist(stub, "ds")
    create_mnist(stub, "other")
    reqs = [
        ingest_pb2.AppendRequest(dataset="ds", batch=batch(mnist_like(2))),
        ingest_pb2.AppendRequest(dataset="other", batch=batch(mnist_like(2))),
    ]
    err = rpc_error(stub.Append, iter(reqs))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "names dataset 'other'" in err.details() and "'ds'" in err.details()
    assert files_of(data_dir, "ds") == []


def _bad(arrays: dict[str, np.ndarray]) -> dict[str, tensor_pb2.Tensor]:
    return {k: to_proto(v) for k, v in arrays.items()}


GOOD = mnist_like(3)
BAD_BATCHES = {
    "missing feature": (_bad({"image": GOOD["image"]}), "missing feature(s) ['label']"),
    "unknown feature": (_bad({**GOOD, "extra": GOOD["label"]}), "unknown feature(s) ['extra']"),
    "wrong dtype": (
        _bad({"image": GOOD["image"].astype(np.float32), "label": GOOD["label"]}),
        "feature 'image' has dtype float32 but the schema expects uint8",
    ),
    "wrong record shape": (
        _bad({"image": GOOD["image"].reshape(3, 784), "label": GOOD["label"]}),
        "feature 'image' has shape [3, 784] but the schema expects [n,28,28]",
    ),
    "scalar where batch expected": (
        # Built by hand: mlmesh.tensor.to_proto turns a 0-d array into shape [1].
        {
            "image": to_proto(GOOD["image"]),
            "label": tensor_pb2.Tensor(dtype=dtype_code("int64"), shape=[], content=b"\0" * 8),
        },
        "feature 'label' has shape [] but the schema expects [n]",
    ),
    "record counts differ": (
        _bad({"image": GOOD["image"], "label": GOOD["label"][:2]}),
        "feature 'label' has 2 records but feature 'image' has 3",
    ),
    "bytes disagree with shape": (
        {
            "image": tensor_pb2.Tensor(dtype=dtype_code("uint8"), shape=[3, 28, 28], content=b"\0" * 100),
            "label": to_proto(GOOD["label"]),
        },
        "tensor 'image' has 100 bytes but uint8[3,28,28] needs 2352",
    ),
    "unknown tensor dtype": (
        {"image": tensor_pb2.Tensor(dtype=0, shape=[0]), "label": to_proto(GOOD["label"])},
        "tensor 'image' has unknown dtype 0",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_BATCHES))
def test_bad_batch_after_good_ones_is_invalid_argument_and_leaves_nothing(stub, data_dir, case: str) -> None:
    create_mnist(stub, "ds", max_partition_bytes=SMALL)
    features, expect = BAD_BATCHES[case]
    # 12 good records fill two partitions (written to temp files) before the bad batch.
    reqs = [
        *append_requests("ds", mnist_like(12), per_message=4),
        ingest_pb2.AppendRequest(batch=ingest_pb2.RecordBatch(features=features)),
    ]
    err = rpc_error(stub.Append, iter(reqs))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expect in err.details()
    assert files_of(data_dir, "ds") == []
    assert (
        list(stub.ListPartitions(ingest_pb2.ListPartitionsRequest(dataset="ds"), timeout=30).partitions) == []
    )
    assert stub.GetDataset(ingest_pb2.GetDatasetRequest(name="ds"), timeout=30).dataset.num_records == 0


def test_failed_stream_leaves_earlier_commits_untouched(stub, data_dir) -> None:
    create_mnist(stub, "ds", max_partition_bytes=SMALL)
    append(stub, append_requests("ds", mnist_like(7), per_message=7))
    before = files_of(data_dir, "ds")
    reqs = [
        *append_requests("ds", mnist_like(12), per_message=4),
        ingest_pb2.AppendRequest(batch=ingest_pb2.RecordBatch(features=_bad({"image": GOOD["image"]}))),
    ]
    assert rpc_error(stub.Append, iter(reqs)).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert files_of(data_dir, "ds") == before == ["part-00000000.bin", "part-00000001.bin"]
    assert stub.GetDataset(ingest_pb2.GetDatasetRequest(name="ds"), timeout=30).dataset.num_records == 7


def test_record_larger_than_partition_bound_is_invalid_argument(stub, data_dir) -> None:
    schema = ingest_pb2.DatasetSchema(
        features=[
            ingest_pb2.FeatureSpec(name="x", dtype=dtype_code("float32"), shape=[32, 32]),  # 4096 bytes
            ingest_pb2.FeatureSpec(name="y", dtype=dtype_code("int64")),
        ]
    )
    stub.CreateDataset(ingest_pb2.CreateDatasetRequest(name="big", schema=schema, max_partition_bytes=4096))
    rec = {"x": np.zeros((1, 32, 32), np.float32), "y": np.zeros(1, np.int64)}
    err = rpc_error(stub.Append, iter([ingest_pb2.AppendRequest(dataset="big", batch=batch(rec))]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "has 4104 bytes" in err.details() and "max_partition_bytes is 4096" in err.details()
    assert files_of(data_dir, "big") == []


def test_client_cancel_mid_stream_leaves_no_file(stub, data_dir) -> None:
    create_mnist(stub, "ds", max_partition_bytes=SMALL)
    release = threading.Event()
    sent = threading.Event()

    def requests():
        yield from append_requests("ds", mnist_like(12), per_message=4)
        sent.set()
        release.wait(10)  # hold the stream open until the client cancels

    future = stub.Append.future(requests(), timeout=30)
    assert sent.wait(10)
    tmp_dir = data_dir / "datasets" / "ds"
    deadline = time.monotonic() + 10
    while not any(p.name.startswith(".tmp-") for p in tmp_dir.iterdir()):
        assert time.monotonic() < deadline, "the stream never wrote a temp partition"
        time.sleep(0.01)
    future.cancel()
    release.set()
    deadline = time.monotonic() + 10
    while files_of(data_dir, "ds"):
        assert time.monotonic() < deadline, f"files left after cancel: {files_of(data_dir, 'ds')}"
        time.sleep(0.01)
    assert stub.GetDataset(ingest_pb2.GetDatasetRequest(name="ds"), timeout=30).dataset.num_partitions == 0


def test_bad_batch_is_located_by_message_and_record_indices(stub) -> None:
    create_mnist(stub, "ds", max_partition_bytes=SMALL)
    bad = {"image": GOOD["image"].astype(np.float32), "label": GOOD["label"]}
    reqs = [*append_requests("ds", mnist_like(12), per_message=4), ingest_pb2.AppendRequest(batch=batch(bad))]
    err = rpc_error(stub.Append, iter(reqs))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("Append message 3, records 12..14 of the stream: feature 'image'")
    assert err.details().endswith("nothing of this stream was kept")


# -- growing datasets ------------------------------------------------------------------


def test_append_adds_partitions_without_rewriting_old_ones(stub, data_dir) -> None:
    create_mnist(stub, "ds", max_partition_bytes=SMALL)
    append(stub, append_requests("ds", mnist_like(7), per_message=7))
    part_dir = data_dir / "datasets" / "ds"
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in part_dir.iterdir()}
    append(stub, append_requests("ds", mnist_like(12, start=7), per_message=4))
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in part_dir.iterdir()}
    assert {k: after[k] for k in before} == before
    assert sorted(set(after) - set(before)) == [f"part-{i:08d}.bin" for i in range(2, 5)]


def test_each_partition_records_when_its_stream_arrived(stub) -> None:
    create_mnist(stub, "ds", max_partition_bytes=SMALL)
    t0 = time.time()
    first = append(stub, append_requests("ds", mnist_like(7), per_message=7)).partitions
    t1 = time.time()
    time.sleep(0.05)
    second = append(stub, append_requests("ds", mnist_like(3, start=7), per_message=3)).partitions
    t2 = time.time()
    # One stream's partitions arrive together, at its commit; ListPartitions shows the same times.
    assert len({p.created_unix for p in first}) == 1
    assert t0 <= first[0].created_unix <= t1 < second[0].created_unix <= t2
    listed = stub.ListPartitions(ingest_pb2.ListPartitionsRequest(dataset="ds"), timeout=30).partitions
    assert [p.created_unix for p in listed] == [p.created_unix for p in (*first, *second)]


# -- a full disk -------------------------------------------------------------------------


def _fill_then_fail(err: int):
    """A write_partition that writes part of the file, then fails as a full disk does."""

    def write(path: Path, *args, **kwargs) -> int:
        path.write_bytes(b"x" * 100)
        raise OSError(err, os.strerror(err))

    return write


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_full_disk_is_resource_exhausted_and_leaves_no_partial_partition(
    stub, data_dir, monkeypatch, err: int
) -> None:
    create_mnist(stub, "ds", max_partition_bytes=SMALL)
    append(stub, append_requests("ds", mnist_like(7), per_message=7))
    before = files_of(data_dir, "ds")
    real = append_module.write_partition
    calls = []

    def second_write_fails(path: Path, *args, **kwargs) -> int:
        calls.append(path)
        if len(calls) < 2:
            return real(path, *args, **kwargs)
        return _fill_then_fail(err)(path)

    monkeypatch.setattr(append_module, "write_partition", second_write_fails)
    err_ = rpc_error(stub.Append, append_requests("ds", mnist_like(12, start=7), per_message=4))
    assert err_.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "dataset 'ds'" in err_.details() and "bytes free under" in err_.details()
    assert os.strerror(err) in err_.details() and "nothing of this Append stream was kept" in err_.details()
    assert len(calls) == 2  # the first partition of the stream was written, then removed
    assert files_of(data_dir, "ds") == before
    assert stub.GetDataset(ingest_pb2.GetDatasetRequest(name="ds"), timeout=30).dataset.num_records == 7


def test_full_disk_at_commit_is_resource_exhausted_and_leaves_nothing(stub, data_dir, monkeypatch) -> None:
    create_mnist(stub, "ds", max_partition_bytes=SMALL)

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(append_module.Catalog, "commit_partitions", full)
    err = rpc_error(stub.Append, append_requests("ds", mnist_like(12), per_message=4))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "commit its 3 partition(s) of dataset 'ds': database or disk is full" in err.details()
    assert files_of(data_dir, "ds") == []


def test_a_stream_writes_fewer_partitions_at_once_the_larger_they_are() -> None:
    # The stream's messages are held until their partition is written: about
    # writers_for(size) + 1 partitions of memory.
    assert writers_for(8 * 1024 * 1024) == WRITERS
    assert writers_for(WRITE_AHEAD_BYTES // 2) == min(WRITERS, 2)
    assert writers_for(WRITE_AHEAD_BYTES) == writers_for(1024 * 1024 * 1024) == 1
