"""mlmesh.records / mlmesh.wire: hand-framed RecordBatch messages are standard protobuf."""

from __future__ import annotations

import numpy as np
import pytest
from mlmesh import records, tensor
from mlmesh.errors import InvalidArgument
from mlmesh.ingest.v1 import ingest_pb2

pytestmark = pytest.mark.unit

ARRAYS = {
    "image": (np.arange(3 * 28 * 28) % 256).astype(np.uint8).reshape(3, 28, 28),
    "label": np.array([-1, 0, 2**40], dtype=np.int64),
    "score": np.array([0.5, -2.0, 3.25], dtype=np.float32),
    "mask": np.array([[True, False], [False, False], [True, True]]),
    "empty": np.zeros((3, 0), dtype=np.float64),
}


def columns(arrays: dict[str, np.ndarray]) -> list[records.Column]:
    return [(k, tensor.dtype_code(v.dtype), v.shape, v.tobytes()) for k, v in arrays.items()]


def test_encoded_batches_parse_with_the_generated_classes() -> None:
    msg = ingest_pb2.ReadPartitionResponse.FromString(records.encode(columns(ARRAYS)))
    for name, want in ARRAYS.items():
        np.testing.assert_array_equal(tensor.from_proto(msg.batch.features[name], name), want)


def test_decode_reads_what_the_generated_classes_write() -> None:
    msg = ingest_pb2.ReadPartitionResponse(
        batch=ingest_pb2.RecordBatch(features={k: tensor.to_proto(v) for k, v in ARRAYS.items()})
    )
    got = records.decode(msg.SerializeToString())
    assert set(got) == set(ARRAYS)
    for name, want in ARRAYS.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape
        np.testing.assert_array_equal(got[name], want)


def test_decode_views_the_message_without_copying() -> None:
    message = records.encode(columns(ARRAYS))
    got = records.decode(message)
    assert not got["image"].flags.writeable
    assert np.shares_memory(got["image"], np.frombuffer(message, dtype=np.uint8))


def test_other_fields_around_the_batch_are_kept_or_skipped() -> None:
    req = ingest_pb2.AppendRequest(dataset="ds")
    encoded = records.encode(columns({"label": ARRAYS["label"]}), field=2, prefix=req.SerializeToString())
    parsed = ingest_pb2.AppendRequest.FromString(encoded)
    assert parsed.dataset == "ds"
    np.testing.assert_array_equal(records.decode(encoded, field=2)["label"], ARRAYS["label"])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:-3], "runs past its end"),
        (lambda b: b[:1] + b"\xff" * 11, "truncated varint"),
    ],
)
def test_malformed_messages_are_invalid_argument(mutate, message) -> None:
    encoded = records.encode(columns({"label": ARRAYS["label"]}))
    with pytest.raises(InvalidArgument, match=message):
        records.decode(mutate(encoded))


def test_content_that_disagrees_with_the_shape_names_the_feature() -> None:
    t = tensor.to_proto(ARRAYS["score"])
    t.shape[:] = [4]
    msg = ingest_pb2.ReadPartitionResponse(batch=ingest_pb2.RecordBatch(features={"score": t}))
    with pytest.raises(InvalidArgument, match=r"feature 'score': 12 content bytes for shape \[4\]"):
        records.decode(msg.SerializeToString())


def test_unknown_dtype_names_the_feature() -> None:
    t = tensor.to_proto(ARRAYS["score"])
    t.dtype = 99  # type: ignore[assignment]
    msg = ingest_pb2.ReadPartitionResponse(batch=ingest_pb2.RecordBatch(features={"score": t}))
    with pytest.raises(InvalidArgument, match="feature 'score' has unknown dtype 99"):
        records.decode(msg.SerializeToString())


# --- AppendRequest ----------------------------------------------------------------------------


def test_encode_append_parses_with_the_generated_classes() -> None:
    msg = ingest_pb2.AppendRequest.FromString(records.encode_append(ARRAYS))
    assert msg.dataset == "" and msg.complete_lease_id == ""
    for name, want in ARRAYS.items():
        got = tensor.from_proto(msg.batch.features[name], name)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_encode_append_writes_what_to_proto_writes_for_odd_layouts() -> None:
    odd = {
        "strided": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],
        "big_endian": np.arange(3, dtype=">i8"),
        "scalar": np.array(7, dtype=np.int32),
    }
    msg = ingest_pb2.AppendRequest.FromString(records.encode_append(odd))
    for name, want in odd.items():
        assert msg.batch.features[name] == tensor.to_proto(want)


def test_parse_append_reads_every_field_the_generated_classes_write() -> None:
    req = ingest_pb2.AppendRequest(
        dataset="ds",
        complete_lease_id="lease-1",
        batch=ingest_pb2.RecordBatch(features={k: tensor.to_proto(v) for k, v in ARRAYS.items()}),
    )
    frame = records.parse_append(req.SerializeToString())
    assert (frame.dataset, frame.complete_lease_id) == ("ds", "lease-1")
    assert frame.batch is not None and set(frame.batch) == set(ARRAYS)
    for name, want in ARRAYS.items():
        t = frame.batch[name]
        np.testing.assert_array_equal(tensor.from_parts(t.dtype, t.shape, t.content, name), want)


def test_parse_append_views_the_message_without_copying() -> None:
    message = records.encode_append({"image": ARRAYS["image"]})
    frame = records.parse_append(message)
    assert frame.batch is not None
    t = frame.batch["image"]
    image = tensor.from_parts(t.dtype, t.shape, t.content, "image")
    assert np.shares_memory(image, np.frombuffer(message, dtype=np.uint8))


def test_parse_append_tells_no_batch_from_an_empty_one() -> None:
    assert records.parse_append(ingest_pb2.AppendRequest(dataset="ds").SerializeToString()).batch is None
    empty = ingest_pb2.AppendRequest(batch=ingest_pb2.RecordBatch()).SerializeToString()
    assert records.parse_append(empty).batch == {}


def test_parse_append_merges_repeated_batches_as_protobuf_does() -> None:
    first = records.encode_append({"a": ARRAYS["label"], "b": ARRAYS["score"]})
    second = records.encode_append({"b": ARRAYS["label"]})
    merged = ingest_pb2.AppendRequest.FromString(first + second)
    frame = records.parse_append(first + second)
    assert frame.batch is not None and set(frame.batch) == set(merged.batch.features) == {"a", "b"}
    t = frame.batch["b"]
    np.testing.assert_array_equal(tensor.from_parts(t.dtype, t.shape, t.content, "b"), ARRAYS["label"])


@pytest.mark.parametrize(
    ("message", "expect"),
    [
        (
            records.encode_append({"label": ARRAYS["label"]})[:-2],
            "malformed AppendRequest: a field runs past its end",
        ),
        (b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", "malformed AppendRequest: truncated varint"),
        (b"\x08\x01", "malformed AppendRequest: field 1 has wire type 0"),
        (b"\x1a\x01\xff", "malformed AppendRequest: complete_lease_id is not valid UTF-8"),
        (b"\x12\x05\x0a\x03\x0a\x01\xff", "malformed AppendRequest: a feature name is not valid UTF-8"),
    ],
)
def test_malformed_append_requests_are_invalid_argument(message: bytes, expect: str) -> None:
    with pytest.raises(InvalidArgument, match=expect):
        records.parse_append(message)


def test_from_parts_says_what_from_proto_says() -> None:
    t = tensor.to_proto(ARRAYS["score"])
    t.shape[:] = [4]
    with pytest.raises(InvalidArgument) as by_proto:
        tensor.from_proto(t, "score")
    with pytest.raises(InvalidArgument) as by_parts:
        tensor.from_parts(t.dtype, t.shape, memoryview(t.content), "score")
    assert (
        by_parts.value.message
        == by_proto.value.message
        == "tensor 'score' has 12 bytes but float32[4] needs 16"
    )
