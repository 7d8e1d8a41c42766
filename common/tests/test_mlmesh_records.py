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
