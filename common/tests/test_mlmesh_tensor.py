"""The tensor codec: NumPy <-> mlmesh.types.v1.Tensor, with validation."""

from __future__ import annotations

import numpy as np
import pytest
from mlmesh import tensor
from mlmesh.errors import InvalidArgument
from mlmesh.types.v1 import tensor_pb2

pytestmark = pytest.mark.unit

ALL_DTYPES = ["float32", "float64", "int32", "int64", "uint8", "float16", "bool", "int8", "int16"]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_every_dtype_round_trips_exactly(dtype: str) -> None:
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    proto = tensor.to_proto(arr)
    assert proto.dtype == tensor.dtype_from_name(dtype)
    assert list(proto.shape) == [3, 4, 5]
    back = tensor.from_proto(tensor_pb2.Tensor.FromString(proto.SerializeToString()))
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, arr)


def test_all_nine_proto_dtypes_are_covered() -> None:
    codes = {v for k, v in tensor_pb2.DType.items() if k != "DTYPE_UNSPECIFIED"}
    assert {tensor.dtype_from_name(n) for n in ALL_DTYPES} == codes


def test_scalar_encodes_with_empty_shape_and_one_element() -> None:
    proto = tensor.to_proto(np.float32(2.5))
    assert list(proto.shape) == []
    assert len(proto.content) == 4
    assert tensor.from_proto(proto).item() == 2.5


def test_scalar_with_empty_shape_decodes_to_0d() -> None:
    proto = tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[], content=np.float32(2.5).tobytes())
    back = tensor.from_proto(proto)
    assert back.shape == ()
    assert back.item() == 2.5


def test_big_endian_and_non_contiguous_inputs_are_normalised() -> None:
    arr = np.arange(12, dtype=">i4").reshape(3, 4)[:, ::2]
    back = tensor.from_proto(tensor.to_proto(arr))
    np.testing.assert_array_equal(back, arr)
    assert back.dtype == np.dtype("<i4")


def test_decoded_array_is_read_only_view() -> None:
    back = tensor.from_proto(tensor.to_proto(np.zeros(4, np.float32)))
    with pytest.raises(ValueError):
        back[0] = 1.0


def test_byte_length_mismatch_names_tensor_and_expectation() -> None:
    bad = tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[32, 64], content=b"\0" * 4096)
    with pytest.raises(InvalidArgument) as e:
        tensor.from_proto(bad, "w1")
    assert e.value.message == "tensor 'w1' has 4096 bytes but float32[32,64] needs 8192"


def test_unknown_dtype_is_invalid_argument_naming_the_tensor() -> None:
    bad = tensor_pb2.Tensor(dtype=99, shape=[1], content=b"\0")
    with pytest.raises(InvalidArgument, match=r"tensor 'x' has unknown dtype 99"):
        tensor.from_proto(bad, "x")


def test_unspecified_dtype_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="unknown dtype 0"):
        tensor.from_proto(tensor_pb2.Tensor(shape=[0]), "empty")


def test_negative_dimension_is_rejected() -> None:
    bad = tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_UINT8, shape=[2, -1], content=b"")
    with pytest.raises(InvalidArgument, match=r"tensor 'neg' has a negative dimension in shape \[2, -1\]"):
        tensor.from_proto(bad, "neg")


def test_too_many_dimensions_is_rejected() -> None:
    bad = tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_UINT8, shape=[1] * 33, content=b"\0")
    with pytest.raises(InvalidArgument, match="33 dimensions; at most 32"):
        tensor.from_proto(bad, "deep")


def test_unsupported_numpy_dtype_is_rejected_when_encoding() -> None:
    with pytest.raises(InvalidArgument, match="dtype complex64 is not supported"):
        tensor.to_proto(np.zeros(2, np.complex64))


def test_unknown_dtype_name_lists_the_known_ones() -> None:
    with pytest.raises(InvalidArgument, match=r"unknown dtype 'float8'; expected one of \["):
        tensor.dtype_from_name("float8")


def test_map_round_trip_names_the_bad_entry() -> None:
    protos = tensor.map_to_proto({"a": np.ones((2, 2), np.float32), "b": np.arange(3)})
    back = tensor.map_from_proto(protos)
    np.testing.assert_array_equal(back["b"], np.arange(3))
    protos["b"].content = protos["b"].content[:-1]
    with pytest.raises(InvalidArgument, match="tensor 'b' has 23 bytes but int64\\[3\\] needs 24"):
        tensor.map_from_proto(protos)


def test_describe_formats_dtype_and_shape() -> None:
    assert tensor.describe(tensor_pb2.DTYPE_INT64, [2, 3]) == "int64[2,3]"
    assert tensor.describe(tensor_pb2.DTYPE_FLOAT32, []) == "float32[]"


# -- chunked transfer ---------------------------------------------------------------------------


def test_chunks_reassemble_into_the_same_arrays() -> None:
    rng = np.random.default_rng(0)
    arrays = [
        rng.normal(size=(300, 7)).astype(np.float32),
        np.arange(5, dtype=np.int64),
        np.zeros((0, 3), np.float32),
        rng.normal(size=(1000,)).astype(np.float64)[::2],  # not contiguous
    ]
    pieces = list(tensor.chunks(arrays, size=1000))
    assert all(len(p) == 1000 for p in pieces[:-1]) and 0 < len(pieces[-1]) <= 1000
    asm = tensor.Assembler([(f"t{i}", tensor.header(a)) for i, a in enumerate(arrays)], max_bytes=1 << 20)
    for p in pieces:
        asm.feed(p)
    for got, want in zip(asm.finish(), arrays, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_assembler_names_every_bad_stream() -> None:
    from mlmesh.errors import InvalidArgument, ResourceExhausted

    head = tensor.header(np.zeros(4, np.float32))
    asm = tensor.Assembler([("w", head)], max_bytes=100)
    with pytest.raises(InvalidArgument, match="carried more tensor bytes than its header's tensors need"):
        asm.feed(b"\0" * 17)
    asm.feed(b"\0" * 8)
    with pytest.raises(InvalidArgument, match="carried 8 bytes of tensor data; its header's tensors need 16"):
        asm.finish()
    with pytest.raises(ResourceExhausted, match="need 16 bytes; at most 10 allowed"):
        tensor.Assembler([("w", head)], max_bytes=10)
    with pytest.raises(InvalidArgument, match="'w' in a stream header carries 16 bytes of content"):
        tensor.Assembler([("w", tensor.to_proto(np.zeros(4, np.float32)))], max_bytes=100)


def test_data_frames_are_the_protobuf_encoding_of_data_chunks() -> None:
    from mlmesh.paramserver.v1 import paramserver_pb2 as pb

    arrays = [np.arange(300, dtype=np.float32), np.ones((7, 3), np.int64)]
    frames = list(tensor.data_frames(arrays, size=200))
    assert [pb.PushChunk.FromString(f).data for f in frames] == list(tensor.chunks(arrays, size=200))
    for size in (1, 127, 128, 300, 20_000):  # one- to three-byte length varints
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        wire = pb.PullChunk(data=payload).SerializeToString()
        assert bytes(tensor.frame_data(wire)) == payload  # type: ignore[arg-type]
    header = pb.PullChunk(header=pb.PullResponse(version=3)).SerializeToString()
    assert tensor.frame_data(header) is None
    both = pb.PushChunk(header=pb.PushRequest(job_id="j"), data=b"xy").SerializeToString()
    assert tensor.frame_data(both) is None  # more than the data field: parsed normally
