"""RecordBatch messages (`mlmesh.ingest.v1`) framed by hand, for the bulk paths.

A ReadPartitionResponse or an AppendRequest is almost all column bytes.
Serializing it with the generated classes copies each column three times (into
`bytes`, into the message, into the wire buffer) and parsing copies it again;
here the sender copies once (the column into the message) and the receiver not
at all (the arrays are views on the received message). The bytes on the wire
are the standard encoding, so a peer using the generated classes reads and
writes the same messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mlmesh import tensor, wire
from mlmesh.errors import InvalidArgument

Column = tuple[str, int, Sequence[int], memoryview | bytes]  # name, DType code, shape, content

# AppendRequest: dataset = 1, batch = 2, complete_lease_id = 3.
_APPEND_DATASET, _APPEND_BATCH, _APPEND_LEASE = 1, 2, 3


def columns_of(arrays: Mapping[str, np.ndarray]) -> list[Column]:
    """Columns that view the arrays' bytes (copied only where an array is not C-contiguous
    little endian), as `tensor.to_proto` would encode them."""
    out: list[Column] = []
    for name, a in arrays.items():
        arr = np.asarray(a)
        code = tensor.dtype_code(arr.dtype)
        # np.require keeps 0-d arrays 0-d (ascontiguousarray would make them [1]).
        arr = np.require(arr, dtype=tensor.numpy_dtype(code), requirements="C")
        content = memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else b""
        out.append((name, code, arr.shape, content))
    return out


def encode_append(arrays: Mapping[str, np.ndarray]) -> bytes:
    """A serialized AppendRequest carrying only `batch` (the arrays): one copy of each column."""
    return encode(columns_of(arrays), field=_APPEND_BATCH)


def encode(columns: Sequence[Column], field: int = 1, prefix: bytes = b"") -> bytes:
    """A message whose field `field` is the RecordBatch of `columns`, after `prefix` (the
    message's other fields, already encoded). ReadPartitionResponse.batch is field 1."""
    parts: list[bytes | memoryview] = []
    entries_len = 0
    for name, dtype, shape, content in columns:
        key = name.encode()
        shape_bytes = b"".join(wire.varint(int(d)) for d in shape)
        head = wire.tag(1, wire.VARINT) + wire.varint(dtype)
        if shape_bytes:
            head += wire.len_prefix(2, len(shape_bytes)) + shape_bytes
        head += wire.len_prefix(3, len(content))
        tensor_len = len(head) + len(content)
        entry_head = wire.len_prefix(1, len(key)) + key + wire.len_prefix(2, tensor_len)
        entry_len = len(entry_head) + tensor_len
        outer = wire.len_prefix(1, entry_len)
        parts += [outer + entry_head + head, content]
        entries_len += len(outer) + entry_len
    return b"".join([prefix, wire.len_prefix(field, entries_len), *parts])


@dataclass(frozen=True)
class RawTensor:
    """A Tensor's fields as read off the wire; `content` views the message."""

    dtype: int
    shape: tuple[int, ...]
    content: memoryview


@dataclass
class AppendFrame:
    """The fields of one AppendRequest; `batch` is None when the message has none."""

    dataset: str = ""
    complete_lease_id: str = ""
    batch: dict[str, RawTensor] | None = None


def decode(message: bytes, field: int = 1) -> dict[str, np.ndarray]:
    """The columns of the RecordBatch in field `field` of `message`, as read-only arrays
    that view the message's bytes. InvalidArgument names what is malformed."""
    view = memoryview(message)
    raw: dict[str, RawTensor] = {}
    for number, wire_type, value in wire.fields(view):
        if number == field and wire_type == wire.LEN:
            assert isinstance(value, memoryview)
            _batch_entries(value, raw)  # a repeated message field merges: keep reading
    return {name: _decode_tensor(t, name) for name, t in raw.items()}


def parse_append(message: bytes) -> AppendFrame:
    """Read a serialized AppendRequest in place (the batch's contents view `message`).
    InvalidArgument "malformed AppendRequest: ..." when it is not one; the tensors are
    not validated here (`tensor.from_parts` does that, with the generated path's messages)."""
    frame = AppendFrame()
    try:
        for number, wire_type, value in wire.fields(memoryview(message)):
            if number not in (_APPEND_DATASET, _APPEND_BATCH, _APPEND_LEASE):
                continue  # unknown fields are skipped, as the generated parser does
            if wire_type != wire.LEN:
                raise InvalidArgument(f"malformed message: field {number} has wire type {wire_type}")
            assert isinstance(value, memoryview)
            if number == _APPEND_BATCH:
                if frame.batch is None:
                    frame.batch = {}
                _batch_entries(value, frame.batch)
            elif number == _APPEND_DATASET:
                frame.dataset = _text(value, "dataset")
            else:
                frame.complete_lease_id = _text(value, "complete_lease_id")
    except InvalidArgument as e:
        raise InvalidArgument(
            f"malformed AppendRequest: {e.message.removeprefix('malformed message: ')}"
        ) from None
    return frame


def _text(value: memoryview, what: str) -> str:
    try:
        return str(value, "utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"malformed message: {what} is not valid UTF-8") from None


def _batch_entries(batch: memoryview, out: dict[str, RawTensor]) -> None:
    for number, wire_type, entry in wire.fields(batch):
        if number != 1 or wire_type != wire.LEN:
            continue
        assert isinstance(entry, memoryview)
        name, content_of = "", memoryview(b"")
        for n, wt, v in wire.fields(entry):
            if n == 1 and wt == wire.LEN:
                assert isinstance(v, memoryview)
                name = _text(v, "a feature name")
            elif n == 2 and wt == wire.LEN:
                assert isinstance(v, memoryview)
                content_of = v
        out[name] = _raw_tensor(content_of)  # a repeated map key: the last one wins


def _raw_tensor(buf: memoryview) -> RawTensor:
    dtype, shape, content = 0, [], memoryview(b"")
    for n, wt, v in wire.fields(buf):
        if n == 1 and wt == wire.VARINT:
            assert isinstance(v, int)
            dtype = v
        elif n == 2 and wt == wire.LEN:  # packed (what every encoder writes)
            assert isinstance(v, memoryview)
            shape += [wire.signed64(d) for d in wire.packed_varints(v)]
        elif n == 2 and wt == wire.VARINT:  # unpacked: parsers must accept it too
            assert isinstance(v, int)
            shape.append(wire.signed64(v))
        elif n == 3 and wt == wire.LEN:
            assert isinstance(v, memoryview)
            content = v
    return RawTensor(dtype, tuple(shape), content)


def _decode_tensor(raw: RawTensor, name: str) -> np.ndarray:
    dtype, shape, content = raw.dtype, list(raw.shape), raw.content
    dt = tensor.numpy_dtype(dtype, f"feature {name!r}")
    if len(shape) > tensor.MAX_DIMS or any(d < 0 for d in shape):
        raise InvalidArgument(f"feature {name!r} has an invalid shape {shape}")
    count = int(np.prod(shape, dtype=np.int64))
    if count * dt.itemsize != len(content):
        raise InvalidArgument(
            f"feature {name!r}: {len(content)} content bytes for shape {shape} of {dt.name} "
            f"({count * dt.itemsize} expected)"
        )
    return np.frombuffer(content, dtype=dt, count=count).reshape(shape)


async def gather(call: AsyncIterator[bytes], num_records: int, what: str) -> dict[str, np.ndarray]:
    """The columns of a ReadPartition stream (raw messages), whole. With `num_records`
    known (>= 0), each batch is copied once into columns allocated up front. InvalidArgument
    if the batches disagree with each other or with `num_records`."""
    if num_records < 0:
        parts: dict[str, list[np.ndarray]] = {}
        async for message in call:
            for name, col in decode(message).items():
                parts.setdefault(name, []).append(col)
        return {name: np.concatenate(chunks) for name, chunks in parts.items()}
    out: dict[str, np.ndarray] = {}
    filled = 0
    async for message in call:
        batch = decode(message)
        n = len(next(iter(batch.values()))) if batch else 0
        if filled + n > num_records:
            raise InvalidArgument(f"{what} streamed more than the {num_records} records it holds")
        if not out:
            out = {name: np.empty((num_records, *c.shape[1:]), dtype=c.dtype) for name, c in batch.items()}
        elif batch.keys() != out.keys():
            raise InvalidArgument(f"{what}: a batch holds features {sorted(batch)}, not {sorted(out)}")
        for name, col in batch.items():
            if len(col) != n or col.shape[1:] != out[name].shape[1:]:
                raise InvalidArgument(f"{what}: feature {name!r} has a batch of shape {col.shape}")
            out[name][filled : filled + n] = col
        filled += n
    if filled != num_records:
        raise InvalidArgument(f"{what} streamed {filled} records; its task says {num_records}")
    return out
