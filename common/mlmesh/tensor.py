"""The tensor codec: NumPy arrays <-> `mlmesh.types.v1.Tensor`.

Decoding validates dtype and byte length and returns a read-only view on the
received bytes (no copy); callers that mutate must copy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from mlmesh.errors import InvalidArgument, ResourceExhausted
from mlmesh.types.v1 import tensor_pb2

DType = tensor_pb2.DType

_TO_NUMPY: dict[int, np.dtype] = {
    tensor_pb2.DTYPE_FLOAT32: np.dtype("<f4"),
    tensor_pb2.DTYPE_FLOAT64: np.dtype("<f8"),
    tensor_pb2.DTYPE_INT32: np.dtype("<i4"),
    tensor_pb2.DTYPE_INT64: np.dtype("<i8"),
    tensor_pb2.DTYPE_UINT8: np.dtype("u1"),
    tensor_pb2.DTYPE_FLOAT16: np.dtype("<f2"),
    tensor_pb2.DTYPE_BOOL: np.dtype("?"),
    tensor_pb2.DTYPE_INT8: np.dtype("i1"),
    tensor_pb2.DTYPE_INT16: np.dtype("<i2"),
}
_FROM_NUMPY: dict[str, int] = {dt.str.lstrip("<>|="): code for code, dt in _TO_NUMPY.items()}
# Names used in settings, specs and messages ("float32", ...).
_NAMES: dict[int, str] = {code: dt.name for code, dt in _TO_NUMPY.items()}
_BY_NAME: dict[str, int] = {name: code for code, name in _NAMES.items()}

MAX_DIMS = 32


def dtype_name(code: int) -> str:
    return _NAMES.get(code, f"unknown dtype {code}")


def numpy_dtype(code: int, what: str = "tensor") -> np.dtype:
    """The NumPy dtype of a proto DType; InvalidArgument for an unknown one."""
    try:
        return _TO_NUMPY[code]
    except KeyError:
        raise InvalidArgument(f"{what} has unknown dtype {code}") from None


def dtype_code(dtype: np.dtype | str | type) -> int:
    """The proto DType of a NumPy dtype (or dtype name); InvalidArgument if unsupported."""
    dt = np.dtype(dtype)
    try:
        return _FROM_NUMPY[dt.str.lstrip("<>|=")]
    except KeyError:
        raise InvalidArgument(f"dtype {dt.name} is not supported") from None


def dtype_from_name(name: str) -> int:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise InvalidArgument(f"unknown dtype {name!r}; expected one of {sorted(_BY_NAME)}") from None


def describe(code: int, shape: tuple[int, ...] | list[int]) -> str:
    """Human form such as 'float32[32,64]'."""
    return f"{dtype_name(code)}[{','.join(str(d) for d in shape)}]"


def to_proto(array: np.ndarray) -> tensor_pb2.Tensor:
    """Encode an array (any layout, native or little endian)."""
    arr = np.asarray(array)
    code = dtype_code(arr.dtype)
    # np.require keeps 0-d arrays 0-d (ascontiguousarray would make them [1]).
    arr = np.require(arr, dtype=_TO_NUMPY[code], requirements="C")
    return tensor_pb2.Tensor(dtype=code, shape=arr.shape, content=arr.tobytes())  # type: ignore[arg-type]


def from_proto(tensor: tensor_pb2.Tensor, name: str = "tensor") -> np.ndarray:
    """Decode and validate; the message names the tensor and what was expected.

    Returns a read-only array that shares the message's bytes.
    """
    return from_parts(tensor.dtype, tensor.shape, tensor.content, name)


def from_parts(
    dtype: int, shape: Sequence[int], content: bytes | memoryview, name: str = "tensor"
) -> np.ndarray:
    """`from_proto` for a Tensor's fields read by hand (`mlmesh.records`): the same checks
    and messages, and an array that views `content` (no copy)."""
    dt = numpy_dtype(dtype, f"tensor {name!r}")
    dims = tuple(int(d) for d in shape)
    if len(dims) > MAX_DIMS:
        raise InvalidArgument(f"tensor {name!r} has {len(dims)} dimensions; at most {MAX_DIMS} allowed")
    if any(d < 0 for d in dims):
        raise InvalidArgument(f"tensor {name!r} has a negative dimension in shape {list(dims)}")
    expected = dt.itemsize * int(np.prod(dims, dtype=np.int64))
    if len(content) != expected:
        raise InvalidArgument(
            f"tensor {name!r} has {len(content)} bytes but {describe(dtype, dims)} needs {expected}"
        )
    return np.frombuffer(content, dtype=dt).reshape(dims)


def map_from_proto(tensors: Mapping[str, tensor_pb2.Tensor]) -> dict[str, np.ndarray]:
    return {name: from_proto(t, name) for name, t in tensors.items()}


def map_to_proto(arrays: Mapping[str, np.ndarray]) -> dict[str, tensor_pb2.Tensor]:
    return {name: to_proto(a) for name, a in arrays.items()}


# --- chunked transfer (PullStream / PushStream) ------------------------------------------------

# gRPC in Python moves a stream of ~1 MiB messages several times faster than one big message;
# below a few MiB a single message is cheaper (one call, no chunk bookkeeping).
CHUNK_BYTES = 1 << 20
STREAM_BYTES = 4 << 20


def header(array: np.ndarray) -> tensor_pb2.Tensor:
    """The tensor's dtype and shape, without content (its bytes travel as chunks)."""
    arr = np.asarray(array)
    return tensor_pb2.Tensor(dtype=dtype_code(arr.dtype), shape=arr.shape)  # type: ignore[arg-type]


def chunks(arrays: Sequence[np.ndarray], size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The arrays' bytes (C order), concatenated and cut into pieces of `size` (the last shorter);
    small arrays share a piece, so a step of many small tensors is still few messages."""
    for piece in _pieces(arrays, size):
        yield bytes(piece)


def _pieces(arrays: Sequence[np.ndarray], size: int) -> Iterator[bytes | memoryview]:
    """`chunks` without the final copy: whole pieces are views on the arrays."""
    pending = bytearray()
    for array in arrays:
        arr = np.require(np.asarray(array), requirements="C")
        view = memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else memoryview(b"")
        pos = 0
        while pos < len(view):
            take = min(size - len(pending), len(view) - pos)
            if not pending and take == size:
                yield view[pos : pos + take]
            else:
                pending += view[pos : pos + take]
                if len(pending) == size:
                    yield bytes(pending)
                    pending = bytearray()
            pos += take
    if pending:
        yield bytes(pending)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# PushChunk, PullChunk and RegisterChunk hold the chunk in field 2 (`bytes data`); on the wire a message with
# only that field is the tag (2 << 3 | length-delimited), the length as a varint, the bytes.
_DATA_TAG = b"\x12"


def data_frames(arrays: Sequence[np.ndarray], size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """`chunks(arrays)` already serialized as PushChunk/PullChunk messages holding only `data`:
    one copy per piece instead of three (bytes, the message field, the serialization)."""
    for piece in _pieces(arrays, size):
        yield b"".join((_DATA_TAG, _varint(len(piece)), piece))


def frame_data(message: bytes) -> memoryview | None:
    """The chunk bytes of a serialized PushChunk/PullChunk that holds only `data` (a view, no
    copy); None for any other message (a header), which the caller parses normally."""
    if not message.startswith(_DATA_TAG):
        return None
    length, shift, pos = 0, 0, 1
    while pos < len(message) and shift < 64:
        byte = message[pos]
        length |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            break
        shift += 7
    else:
        return None
    if pos + length != len(message):
        return None  # more fields follow: not a plain data chunk
    return memoryview(message)[pos:]


class StreamLayout:
    """Where each tensor of a chunked stream lies in its concatenated bytes, from the headers
    (in the sender's order), validated: every error names what was wrong (a header with
    content, an unknown dtype, a bad shape, a stream above `max_bytes`). `entries` holds
    (name, dtype, shape, byte offset); `check_feed`/`check_finished` police the byte count
    for whoever consumes the chunks."""

    def __init__(self, headers: Sequence[tuple[str, tensor_pb2.Tensor]], max_bytes: int) -> None:
        self.entries: list[tuple[str, np.dtype, tuple[int, ...], int]] = []
        total = 0
        for name, t in headers:
            if t.content:
                raise InvalidArgument(
                    f"tensor {name!r} in a stream header carries {len(t.content)} bytes of content; "
                    "its bytes belong in the data chunks"
                )
            dt = numpy_dtype(t.dtype, f"tensor {name!r}")
            shape = tuple(int(d) for d in t.shape)
            if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
                raise InvalidArgument(f"tensor {name!r} has an invalid shape {list(shape)}")
            nbytes = dt.itemsize * int(np.prod(shape, dtype=np.int64))
            self.entries.append((name, dt, shape, total))
            total += nbytes
        if total > max_bytes:
            raise ResourceExhausted(f"the stream's tensors need {total} bytes; at most {max_bytes} allowed")
        self.total = total

    def check_feed(self, filled: int, nbytes: int) -> None:
        """Refuse `nbytes` more after `filled` if they pass the headers' total."""
        if filled + nbytes > self.total:
            raise InvalidArgument(
                f"the stream carried more tensor bytes than its header's tensors need ({self.total})"
            )

    def check_finished(self, filled: int) -> None:
        if filled != self.total:
            raise InvalidArgument(
                f"the stream carried {filled} bytes of tensor data; its header's tensors need {self.total}"
            )


class Assembler:
    """Rebuilds arrays from chunked bytes, given their headers (in the sender's order;
    validated by `StreamLayout`).

    One buffer holds them all; the arrays it returns are views on it (no copy after the
    chunks land).
    """

    def __init__(
        self, headers: Sequence[tuple[str, tensor_pb2.Tensor]] | StreamLayout, max_bytes: int = 0
    ) -> None:
        self.layout = headers if isinstance(headers, StreamLayout) else StreamLayout(headers, max_bytes)
        self.total = self.layout.total
        # Not zeroed (finish() refuses a buffer with bytes left unwritten), and written through
        # a memoryview: a bytearray slice assignment from a view copies the data twice.
        self._buf = np.empty(self.total, dtype=np.uint8)
        self._view = memoryview(self._buf)
        self._filled = 0

    def feed(self, data: bytes | memoryview) -> None:
        self.layout.check_feed(self._filled, len(data))
        end = self._filled + len(data)
        self._view[self._filled : end] = data
        self._filled = end

    @property
    def filled(self) -> int:
        """Bytes fed so far."""
        return self._filled

    def finish(self) -> list[np.ndarray]:
        self.layout.check_finished(self._filled)
        out = []
        for _, dt, shape, offset in self.layout.entries:
            count = int(np.prod(shape, dtype=np.int64))
            out.append(self._buf[offset : offset + count * dt.itemsize].view(dt).reshape(shape))
        return out
