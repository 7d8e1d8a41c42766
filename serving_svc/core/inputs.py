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

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from mlmesh.errors import InvalidArgument

from serving_svc.core.signature import InputSpec, format_shape


def _shape_matches(actual: tuple[int, ...], expected: tuple[int | None, ...] | None) -> bool:
    if expected is None:
        return True
    return len(actual) == len(expected) and all(
        e is None or a == e for a, e in zip(actual, expected, strict=True)
    )


def cast_to(arr: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    """`arr` as `dtype` when that keeps every value; InvalidArgument naming `what` otherwise."""
    src = arr.dtype
    if src == dtype:
        return arr
    refuse = f"{what} has dtype {src.name} but the model expects {dtype.name}"
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
        if isinstance(instance, dict):
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
    return type(value).__name__


def _example_array(spec: InputSpec, value: Any, index: int) -> np.ndarray:
    what = f"instance {index} input {spec.name!r}"
    try:
        arr = np.asarray(value)
    except ValueError as e:  # ragged nested lists
        raise InvalidArgument(f"{what} is not a rectangular array of numbers: {e}") from None
    if arr.dtype.kind not in "biuf":
        raise InvalidArgument(
            f"{what} holds {_kind(value) if arr.ndim == 0 else 'non-numeric or ragged values'}; "
            "expected nested lists of numbers"
        )
    per_example = None if spec.shape is None else spec.shape[1:]
    if not _shape_matches(arr.shape, per_example):
        expected = "any shape" if per_example is None else format_shape(per_example)
        raise InvalidArgument(
            f"{what} has shape {format_shape(arr.shape)} but the model expects {expected} per example"
        )
    return cast_to(arr, spec.dtype, what)
