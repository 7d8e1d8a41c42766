"""The tensor codec: NumPy arrays <-> `mlmesh.types.v1.Tensor`.

Decoding validates dtype and byte length and returns a read-only view on the
received bytes (no copy); callers that mutate must copy.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mlmesh.errors import InvalidArgument
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
    dt = numpy_dtype(tensor.dtype, f"tensor {name!r}")
    shape = tuple(int(d) for d in tensor.shape)
    if len(shape) > MAX_DIMS:
        raise InvalidArgument(f"tensor {name!r} has {len(shape)} dimensions; at most {MAX_DIMS} allowed")
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"tensor {name!r} has a negative dimension in shape {list(shape)}")
    expected = dt.itemsize * int(np.prod(shape, dtype=np.int64))
    if len(tensor.content) != expected:
        raise InvalidArgument(
            f"tensor {name!r} has {len(tensor.content)} bytes but "
            f"{describe(tensor.dtype, shape)} needs {expected}"
        )
    return np.frombuffer(tensor.content, dtype=dt).reshape(shape)


def map_from_proto(tensors: Mapping[str, tensor_pb2.Tensor]) -> dict[str, np.ndarray]:
    return {name: from_proto(t, name) for name, t in tensors.items()}


def map_to_proto(arrays: Mapping[str, np.ndarray]) -> dict[str, tensor_pb2.Tensor]:
    return {name: to_proto(a) for name, a in arrays.items()}
