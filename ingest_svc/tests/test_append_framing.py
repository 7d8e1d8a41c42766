"""Append's messages framed by hand (`mlmesh.records`) and by the generated classes: the
server reads either in place, the same validation applies, and a malformed frame is refused."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from mlmesh import records, wire
from mlmesh.clients import IngestClient
from mlmesh.ingest.v1 import ingest_pb2

from ingest_svc.tests.conftest import (
    MNIST_RECORD_BYTES,
    append_requests,
    batch,
    create_mnist,
    mnist_like,
    read_all,
)

pytestmark = pytest.mark.unit

SMALL = 4096  # 5 MNIST-like records per partition
PER_PARTITION = SMALL // MNIST_RECORD_BYTES


def files_of(data_dir: Path, dataset: str) -> list[str]:
    return sorted(p.name for p in (data_dir / "datasets" / dataset).iterdir())


def labels_of(stub, dataset: str, partitions) -> np.ndarray:
    return np.concatenate([read_all(stub, dataset, p.partition_id)[0]["label"] for p in partitions])


def raw_append(server, messages: list[bytes]) -> ingest_pb2.AppendResponse:
    """An Append call whose messages are sent exactly as given."""
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = channel.stream_unary(
            "/mlmesh.ingest.v1.IngestService/Append",
            request_serializer=None,
            response_deserializer=ingest_pb2.AppendResponse.FromString,
        )
        return call(iter(messages), timeout=30)


def raw_append_error(server, messages: list[bytes]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        raw_append(server, messages)
    return info.value


def named(dataset: str) -> bytes:
    return ingest_pb2.AppendRequest(dataset=dataset).SerializeToString()


def test_a_client_using_the_generated_stubs_appends_and_reads_back_every_byte(stub) -> None:
    create_mnist(stub, "ds", max_partition_bytes=SMALL)
    data = mnist_like(23)
    resp = stub.Append(append_requests("ds", data, per_message=4), timeout=30)
    assert resp.records_appended == 23
    assert [p.num_records for p in resp.partitions] == [PER_PARTITION] * 4 + [3]
    got = [read_all(stub, "ds", p.partition_id)[0] for p in resp.partitions]
    for name in data:
        np.testing.assert_array_equal(np.concatenate([g[name] for g in got]), data[name])


def test_ingest_client_frames_batches_by_hand_and_the_server_keeps_them_in_order(server, stub) -> None:
    create_mnist(stub, "ds", max_partition_bytes=SMALL)
    data = mnist_like(203)
    with IngestClient(f"127.0.0.1:{server.port}") as client:
        # Batches of 7 records: partitions fill mid-batch, and several are written at once.
        resp = client.append("ds", ({k: v[i : i + 7] for k, v in data.items()} for i in range(0, 203, 7)))
    assert resp.records_appended == 203
    assert [p.partition_id for p in resp.partitions] == list(range(41))
    np.testing.assert_array_equal(labels_of(stub, "ds", resp.partitions), data["label"])
    image = np.concatenate([read_all(stub, "ds", p.partition_id)[0]["image"] for p in resp.partitions])
    np.testing.assert_array_equal(image, data["image"])


def test_hand_framed_and_generated_messages_mix_in_one_stream(server, stub) -> None:
    create_mnist(stub, "ds")
    messages = [
        named("ds"),
        records.encode_append(mnist_like(2)),
        ingest_pb2.AppendRequest(batch=batch(mnist_like(3, start=2))).SerializeToString(),
        records.encode_append(mnist_like(1, start=5)),
    ]
    resp = raw_append(server, messages)
    assert resp.records_appended == 6
    np.testing.assert_array_equal(labels_of(stub, "ds", resp.partitions), np.arange(6))


def test_fields_the_server_does_not_know_are_skipped(server, stub) -> None:
    create_mnist(stub, "ds")
    unknown = wire.tag(9, wire.VARINT) + wire.varint(5) + wire.len_prefix(10, 3) + b"abc"
    resp = raw_append(server, [named("ds") + unknown, records.encode_append(mnist_like(2)) + unknown])
    assert resp.records_appended == 2


BAD_FRAMES = {
    "truncated": (lambda m: m[:-5], "runs past its end"),
    "truncated varint": (lambda m: m[:1] + b"\xff" * 11, "truncated varint"),
    "dataset as a varint": (
        lambda m: wire.tag(1, wire.VARINT) + wire.varint(3) + m,
        "field 1 has wire type 0",
    ),
    "batch as a varint": (lambda m: wire.tag(2, wire.VARINT) + wire.varint(3), "field 2 has wire type 0"),
    "unknown wire type": (lambda m: b"\x0f" + m, "wire type 7"),
    "dataset not UTF-8": (lambda m: wire.len_prefix(1, 2) + b"\xff\xfe", "dataset is not valid UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
def test_a_malformed_frame_is_invalid_argument_naming_it_and_nothing_is_kept(
    server, stub, data_dir, case: str
) -> None:
    create_mnist(stub, "ds", max_partition_bytes=SMALL)
    mutate, expect = BAD_FRAMES[case]
    good = [records.encode_append(mnist_like(4, start=i)) for i in range(0, 12, 4)]  # two partitions written
    err = raw_append_error(server, [named("ds"), *good, mutate(records.encode_append(mnist_like(2)))])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("Append message 4: malformed AppendRequest: ")
    assert expect in err.details() and err.details().endswith("nothing of this stream was kept")
    assert files_of(data_dir, "ds") == []
    assert stub.GetDataset(ingest_pb2.GetDatasetRequest(name="ds"), timeout=30).dataset.num_records == 0


def test_a_malformed_first_frame_is_invalid_argument(server) -> None:
    err = raw_append_error(server, [named("ds")[:-1]])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("Append message 0: malformed AppendRequest: a field runs past its end")


def test_a_hand_framed_tensor_that_disagrees_with_its_shape_gets_the_generated_paths_message(
    server, stub, data_dir
) -> None:
    create_mnist(stub, "ds", max_partition_bytes=SMALL)
    good = mnist_like(3)
    bad = records.encode(
        [
            ("image", records.columns_of(good)[0][1], (3, 28, 28), b"\0" * 100),
            *records.columns_of({"label": good["label"]}),
        ],
        field=2,
    )
    err = raw_append_error(server, [named("ds"), records.encode_append(mnist_like(8)), bad])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("Append message 2, records 8..10 of the stream: ")
    assert "tensor 'image' has 100 bytes but uint8[3,28,28] needs 2352" in err.details()
    assert files_of(data_dir, "ds") == []
