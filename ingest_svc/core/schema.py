"""Dataset names, schemas and record batches: the domain types and their validation.

Everything here is pure and immutable, hence thread-safe.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from mlmesh.errors import InvalidArgument
from mlmesh.tensor import MAX_DIMS

DATASET_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
# Feature names become SavedModel input names, so keep them to what TensorFlow accepts.
FEATURE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")
MAX_FEATURES = 1024

# The dtypes a feature may have, by NumPy name (the codec in mlmesh.tensor supports the same set).
SUPPORTED_DTYPES = ("bool", "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8")


def validate_dataset_name(name: str) -> str:
    if not DATASET_NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid dataset name {name!r}: expected 1-128 characters of [a-z0-9._-] "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class FeatureSpec:
    """One column; `shape` is per record."""

    name: str
    dtype: str  # NumPy name, one of SUPPORTED_DTYPES
    shape: tuple[int, ...]

    @property
    def np_dtype(self) -> np.dtype:
        # Little endian on disk and on the wire, whatever the host.
        return np.dtype(self.dtype).newbyteorder("<")

    @property
    def record_bytes(self) -> int:
        return self.np_dtype.itemsize * math.prod(self.shape)

    def describe(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class Schema:
    """An ordered, validated list of features (order is part of identity)."""

    features: tuple[FeatureSpec, ...]

    @staticmethod
    def build(features: list[FeatureSpec]) -> Schema:
        """Validate and build; InvalidArgument names the first problem found."""
        if not features:
            raise InvalidArgument("schema has no features; at least one is required")
        if len(features) > MAX_FEATURES:
            raise InvalidArgument(f"schema has {len(features)} features; at most {MAX_FEATURES} allowed")
        seen: set[str] = set()
        for f in features:
            if not FEATURE_NAME_RE.fullmatch(f.name):
                raise InvalidArgument(
                    f"invalid feature name {f.name!r}: expected 1-128 characters of [A-Za-z0-9_.-] "
                    "starting with a letter or underscore"
                )
            if f.name in seen:
                raise InvalidArgument(f"feature {f.name!r} appears more than once in the schema")
            seen.add(f.name)
            if f.dtype not in SUPPORTED_DTYPES:
                raise InvalidArgument(
                    f"feature {f.name!r} has unknown dtype {f.dtype!r}; "
                    f"expected one of {list(SUPPORTED_DTYPES)}"
                )
            if len(f.shape) > MAX_DIMS:
                raise InvalidArgument(
                    f"feature {f.name!r} has {len(f.shape)} dimensions; at most {MAX_DIMS} allowed"
                )
            if any(d < 0 for d in f.shape):
                raise InvalidArgument(
                    f"feature {f.name!r} has a negative dimension in shape {list(f.shape)}; "
                    "dimensions must be >= 0"
                )
        return Schema(tuple(features))

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def record_bytes(self) -> int:
        """Bytes of one record: the sum of its features' bytes."""
        return sum(f.record_bytes for f in self.features)

    def feature(self, name: str) -> FeatureSpec:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def describe(self) -> str:
        return ", ".join(f"{f.name}: {f.describe()}" for f in self.features)

    def to_json(self) -> str:
        return json.dumps([{"name": f.name, "dtype": f.dtype, "shape": list(f.shape)} for f in self.features])

    @staticmethod
    def from_json(text: str) -> Schema:
        return Schema(tuple(FeatureSpec(d["name"], d["dtype"], tuple(d["shape"])) for d in json.loads(text)))

    def validate_batch(self, arrays: Mapping[str, np.ndarray]) -> int:
        """Check a batch holds exactly this schema's features as [n, *shape] of the right
        dtype, with one n for all; return n. InvalidArgument names the feature and
        what was expected."""
        missing = [n for n in self.names if n not in arrays]
        if missing:
            raise InvalidArgument(f"batch is missing feature(s) {missing}; the schema has {self.names}")
        extra = sorted(set(arrays) - set(self.names))
        if extra:
            raise InvalidArgument(f"batch has unknown feature(s) {extra}; the schema has {self.names}")
        n: int | None = None
        first = ""
        for f in self.features:
            arr = arrays[f.name]
            got_dtype = arr.dtype.name
            if got_dtype != f.dtype:
                raise InvalidArgument(
                    f"feature {f.name!r} has dtype {got_dtype} but the schema expects {f.dtype}"
                )
            if arr.ndim != len(f.shape) + 1 or tuple(arr.shape[1:]) != f.shape:
                want = "[n," + ",".join(str(d) for d in f.shape) + "]" if f.shape else "[n]"
                raise InvalidArgument(
                    f"feature {f.name!r} has shape {list(arr.shape)} but the schema expects {want} "
                    f"(records of {f.describe()})"
                )
            if n is None:
                n, first = int(arr.shape[0]), f.name
            elif arr.shape[0] != n:
                raise InvalidArgument(
                    f"feature {f.name!r} has {arr.shape[0]} records but feature {first!r} has {n}; "
                    "every feature of a batch needs the same number of records"
                )
        assert n is not None  # the schema has at least one feature
        return n
