"""Turning a request's inputs into arrays the servable accepts, or saying why not.

Two request forms, both checked against the signature (names, dtype, shape)
before anything is queued, so a bad request never reaches a batch:

- tensors: {name: array} with a leading batch dimension (gRPC clients);
- instances: one entry per example (JSON clients): for a one-input model the
  example itself (nested lists of numbers), or an object {name: value}.

Casts happen only where no value changes meaning: integers and bools to
floats (pixels 0..255 → float32), wider/narrower integers and floats when the
values fit. Anything else is InvalidArgument naming the input.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from mlmesh.errors import InvalidArgument

from serving_svc.core.signature import STRING, InputSpec, format_shape


def _shape_matches(actual: tuple[int, ...], expected: tuple[int | None, ...] | None) -> bool:
    if expected is None:
        return True
    return len(actual) == len(expected) and all(
        e is None or a == e for a, e in zip(actual, expected, strict=True)
    )


def cast_to(arr: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    """`arr` as `dtype` when that keeps every value; InvalidArgument naming `what` otherwise."""
    src = arr.dtype
    if dtype == STRING:
        if src.kind == "O" or src.kind == "S":
            return arr.astype(object) if src.kind == "S" else arr
        raise InvalidArgument(f"{what} has dtype {src.name} but the model expects string")
    if src == dtype:
        return arr
    refuse = (
        f"{what} has dtype {'string' if src.kind in 'OSU' else src.name} but the model expects {dtype.name}"
    )
    if dtype.kind == "b":
        raise InvalidArgument(f"{refuse}; only bool values are accepted")
    if src.kind not in "biuf":
        raise InvalidArgument(f"{refuse}; {src.name} values cannot be converted")
    if np.can_cast(src, dtype, casting="safe") or (src.kind in "biu" and dtype.kind == "f"):
        return arr.astype(dtype)
    if src.kind == "f" and dtype.kind in "iu":
        if arr.size and not np.isfinite(arr).all():
            raise InvalidArgument(f"{refuse}; it holds NaN or infinite values")
        if arr.size and not np.array_equal(arr, np.trunc(arr)):
            raise InvalidArgument(f"{refuse}; it holds non-integer values")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise InvalidArgument(
                f"{refuse}; values range over [{arr.min()}, {arr.max()}] "
                f"but {dtype.name} holds [{info.min}, {info.max}]"
            )
        return arr.astype(dtype)
    # float → narrower float: refuse only if a finite value would overflow to infinity.
    with np.errstate(over="ignore"):
        out = arr.astype(dtype)
    if arr.size and bool(np.any(np.isinf(out) & np.isfinite(arr))):
        raise InvalidArgument(f"{refuse}; some values overflow {dtype.name}")
    return out


def _check_batch(n: int, max_examples: int) -> None:
    if n == 0:
        raise InvalidArgument("batch size is 0: send at least one example")
    if n > max_examples:
        raise InvalidArgument(f"batch size {n} exceeds the limit of {max_examples} examples per request")


def _name_mismatch(given: Sequence[str], expected: Mapping[str, InputSpec], what: str) -> str:
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if unexpected:
        parts.append(f"unexpected {unexpected}")
    return f"{what} {sorted(given)} do not match the model's inputs {sorted(expected)}: {', '.join(parts)}"


def prepare_tensors(
    specs: Mapping[str, InputSpec], arrays: Mapping[str, np.ndarray], max_examples: int
) -> tuple[dict[str, np.ndarray], int]:
    """Validate batched tensors; returns (arrays in the signature's dtypes, batch size)."""
    if set(arrays) != set(specs):
        raise InvalidArgument(_name_mismatch(list(arrays), specs, "inputs"))
    sizes: dict[str, int] = {}
    for name, arr in arrays.items():
        spec = specs[name]
        if arr.ndim == 0:
            raise InvalidArgument(
                f"input {name!r} is a scalar but the model expects {spec.describe_shape()} "
                "(a leading batch dimension)"
            )
        if not _shape_matches(arr.shape, spec.shape):
            raise InvalidArgument(
                f"input {name!r} has shape {format_shape(arr.shape)} "
                f"but the model expects {spec.describe_shape()}"
            )
        sizes[name] = arr.shape[0]
    if len(set(sizes.values())) > 1:
        raise InvalidArgument(
            f"inputs have different batch sizes {dict(sorted(sizes.items()))}; they must agree"
        )
    n = next(iter(sizes.values()))
    _check_batch(n, max_examples)
    return {name: cast_to(arr, specs[name].dtype, f"input {name!r}") for name, arr in arrays.items()}, n


def prepare_instances(
    specs: Mapping[str, InputSpec], instances: Sequence[Any], max_examples: int
) -> tuple[dict[str, np.ndarray], int]:
    """Validate per-example instances (plain Python values: lists, numbers,
    bools, dicts) and stack them into batched arrays; errors name the
    instance index."""
    n = len(instances)
    _check_batch(n, max_examples)
    names = list(specs)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for i, instance in enumerate(instances):
        if isinstance(instance, dict) and not is_b64(instance):
            if set(instance) != set(specs):
                raise InvalidArgument(_name_mismatch(list(instance), specs, f"instance {i}: inputs"))
            values = instance
        elif len(names) == 1:
            values = {names[0]: instance}
        else:
            raise InvalidArgument(
                f"instance {i} is a {_kind(instance)} but the model has inputs {names}; "
                "give each instance as an object {name: value}"
            )
        for name in names:
            columns[name].append(_example_array(specs[name], values[name], i))
    arrays: dict[str, np.ndarray] = {}
    for name, column in columns.items():
        shapes = {a.shape for a in column}
        if len(shapes) > 1:
            raise InvalidArgument(
                f"instances give input {name!r} different shapes {sorted(format_shape(s) for s in shapes)}; "
                "they must agree to form a batch"
            )
        arrays[name] = np.stack(column)
    return arrays, n


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "list"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def is_b64(value: Any) -> bool:
    """TF Serving's binary value: {"b64": "<base64>"}."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _bytes_leaves(value: Any, what: str) -> Any:
    """Strings (UTF-8) and {"b64": ...} objects → bytes, recursively through lists."""
    if isinstance(value, list):
        return [_bytes_leaves(v, what) for v in value]
    if isinstance(value, str):
        return value.encode()
    if is_b64(value):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except binascii.Error as e:
            raise InvalidArgument(f"{what} has invalid base64: {e}") from None
    raise InvalidArgument(f'{what} holds a {_kind(value)}; the model expects strings (or {{"b64": ...}})')


def string_array(value: Any, what: str) -> np.ndarray:
    """Nested lists of strings / b64 objects → an object array of bytes."""
    leaves = _bytes_leaves(value, what)
    shape: list[int] = []
    probe = leaves
    while isinstance(probe, list):
        shape.append(len(probe))
        probe = probe[0] if probe else None
    arr = np.empty(tuple(shape), dtype=object)
    try:
        if shape:
            flat = np.array(leaves, dtype=object)
            if flat.shape != tuple(shape):
                raise ValueError(f"shape {list(flat.shape)}")
            arr[...] = flat
        else:
            arr[()] = leaves
    except ValueError as e:
        raise InvalidArgument(f"{what} is not a rectangular array of strings: {e}") from None
    return arr


def json_array(spec: InputSpec, value: Any, what: str) -> np.ndarray:
    """A JSON value (numbers, bools, strings, nested lists) as an array for `spec`."""
    if spec.dtype == STRING:
        return string_array(value, what)
    return _numeric_array(value, what, spec.describe())


def _numeric_array(value: Any, what: str, expected: str) -> np.ndarray:
    """Nested lists of numbers (or bools) as an array; InvalidArgument names `what` and `expected`."""
    try:
        arr = np.asarray(value)
    except ValueError as e:  # ragged nested lists
        raise InvalidArgument(f"{what} is not a rectangular array of numbers: {e}") from None
    if arr.dtype.kind not in "biuf":
        raise InvalidArgument(
            f"{what} holds {_kind(value) if arr.ndim == 0 else 'non-numeric or ragged values'}; "
            f"the model expects {expected}"
        )
    return arr


def prepare_columns(
    specs: Mapping[str, InputSpec], inputs: Any, max_examples: int
) -> tuple[dict[str, np.ndarray], int]:
    """TF Serving's columnar `inputs`: {name: tensor} or, for a one-input
    model, the tensor itself; each tensor in nested-list form with its batch dimension."""
    if isinstance(inputs, dict) and not is_b64(inputs):
        named = inputs
    elif len(specs) == 1:
        named = {next(iter(specs)): inputs}
    else:
        raise InvalidArgument(
            f"'inputs' is a {_kind(inputs)} but the model has inputs {sorted(specs)}; "
            "give an object {name: value}"
        )
    if set(named) != set(specs):
        raise InvalidArgument(_name_mismatch(list(named), specs, "inputs"))
    arrays = {name: json_array(specs[name], value, f"input {name!r}") for name, value in named.items()}
    return prepare_tensors(specs, arrays, max_examples)


def _example_array(spec: InputSpec, value: Any, index: int) -> np.ndarray:
    what = f"instance {index} input {spec.name!r}"
    if spec.dtype == STRING:
        arr = string_array(value, what)
        per_example = None if spec.shape is None else spec.shape[1:]
        if not _shape_matches(arr.shape, per_example):
            expected = "any shape" if per_example is None else format_shape(per_example)
            raise InvalidArgument(
                f"{what} has shape {format_shape(arr.shape)} but the model expects {expected} per example"
            )
        return arr
    arr = _numeric_array(value, what, f"{spec.describe()} (nested lists of numbers)")
    per_example = None if spec.shape is None else spec.shape[1:]
    if not _shape_matches(arr.shape, per_example):
        expected = "any shape" if per_example is None else format_shape(per_example)
        raise InvalidArgument(
            f"{what} has shape {format_shape(arr.shape)} but the model expects {expected} per example"
        )
    return cast_to(arr, spec.dtype, what)
