"""tensorflow.TensorProto ↔ NumPy, as TF Serving's clients build and read them.

Decoding accepts `tensor_content` and the typed value fields (`float_val`,
`int_val`, `string_val`, ...), including TensorFlow's rule that one value
fills the whole shape. Encoding fills the typed field, as TF Serving does by
default, so clients that read `response.outputs[k].float_val` work unchanged.
No grpc here; only TensorFlow's generated protos (which import tensorflow).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from mlmesh.errors import InvalidArgument
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from serving_svc.core.signature import STRING

# DataType → (NumPy dtype, typed field of TensorProto).
_TYPES: dict[int, tuple[np.dtype, str]] = {
    types_pb2.DT_FLOAT: (np.dtype("<f4"), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype("<f8"), "double_val"),
    types_pb2.DT_INT32: (np.dtype("<i4"), "int_val"),
    types_pb2.DT_UINT8: (np.dtype("u1"), "int_val"),
    types_pb2.DT_INT16: (np.dtype("<i2"), "int_val"),
    types_pb2.DT_INT8: (np.dtype("i1"), "int_val"),
    types_pb2.DT_UINT16: (np.dtype("<u2"), "int_val"),
    types_pb2.DT_INT64: (np.dtype("<i8"), "int64_val"),
    types_pb2.DT_UINT32: (np.dtype("<u4"), "uint32_val"),
    types_pb2.DT_UINT64: (np.dtype("<u8"), "uint64_val"),
    types_pb2.DT_BOOL: (np.dtype("?"), "bool_val"),
    types_pb2.DT_HALF: (np.dtype("<f2"), "half_val"),
    types_pb2.DT_STRING: (STRING, "string_val"),
}
_BY_NUMPY: dict[str, int] = {dt.str: code for code, (dt, _) in _TYPES.items() if dt != STRING}


def dtype_name(code: int) -> str:
    return types_pb2.DataType.Name(code) if code in types_pb2.DataType.values() else f"DataType {code}"


def numpy_dtype(code: int, what: str) -> np.dtype:
    try:
        return _TYPES[code][0]
    except KeyError:
        raise InvalidArgument(
            f"{what} has dtype {dtype_name(code)}, which serving does not support"
        ) from None


def data_type(dtype: np.dtype) -> int:
    """The DataType of a NumPy dtype (object and bytes arrays are DT_STRING)."""
    if dtype.kind in "OSU":
        return types_pb2.DT_STRING
    try:
        return _BY_NUMPY[dtype.newbyteorder("<").str]
    except KeyError:
        raise InvalidArgument(f"dtype {dtype.name} cannot be sent as a TensorProto") from None


def to_array(proto: tensor_pb2.TensorProto, what: str = "tensor") -> np.ndarray:
    """Decode one TensorProto; InvalidArgument names `what` and the mismatch."""
    dtype = numpy_dtype(proto.dtype, what)
    if proto.tensor_shape.unknown_rank:
        raise InvalidArgument(f"{what} has an unknown rank; give its shape")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"{what} has shape {list(shape)} with a negative dimension")
    count = int(np.prod(shape, dtype=np.int64))
    if dtype == STRING:
        values = np.empty(len(proto.string_val), dtype=object)
        values[:] = list(proto.string_val)
    elif proto.tensor_content:
        if len(proto.tensor_content) != count * dtype.itemsize:
            raise InvalidArgument(
                f"{what} has {len(proto.tensor_content)} bytes of tensor_content but "
                f"{dtype_name(proto.dtype)}{list(shape)} needs {count * dtype.itemsize}"
            )
        return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
    elif proto.dtype == types_pb2.DT_HALF:
        values = np.asarray(proto.half_val, dtype=np.uint16).view(np.float16)
    else:
        values = np.asarray(getattr(proto, _TYPES[proto.dtype][1]), dtype=dtype)
    if values.size == count:
        return values.reshape(shape)
    if values.size == 1:  # TensorFlow: a single value fills the shape
        return np.full(shape, values[0], dtype=dtype)
    raise InvalidArgument(
        f"{what} has {values.size} values but {dtype_name(proto.dtype)}{list(shape)} needs {count}"
    )


def arrays_from_protos(protos: Mapping[str, tensor_pb2.TensorProto]) -> dict[str, np.ndarray]:
    return {name: to_array(proto, f"input {name!r}") for name, proto in protos.items()}


def to_proto(arr: np.ndarray) -> tensor_pb2.TensorProto:
    """Encode with the typed value field (TF Serving's default wire form)."""
    arr = np.asarray(arr)
    code = data_type(arr.dtype)
    proto = tensor_pb2.TensorProto(
        dtype=code,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in arr.shape]
        ),
    )
    flat = arr.ravel()
    if code == types_pb2.DT_STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    elif code == types_pb2.DT_HALF:
        proto.half_val.extend(flat.view(np.uint16).tolist())
    else:
        getattr(proto, _TYPES[code][1]).extend(flat.tolist())
    return proto
