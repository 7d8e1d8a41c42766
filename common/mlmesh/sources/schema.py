"""Declared schemas on the client: columns with a dtype and a per-record shape.

The client checks every batch against the schema before it is sent, so a bad
record is named by its column and its index in the source (counted from 0
over the whole source) instead of surfacing as a server error about some
batch. The server checks again; it is the authority.

Pure and immutable, hence thread-safe; no gRPC here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# What ingest_svc accepts (ingest_svc.core.schema; services and clients share no code but the protos).
SUPPORTED_DTYPES = ("bool", "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8")
COLUMN_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")
_SPEC_RE = re.compile(r"\s*([^:\s]+)\s*:\s*([a-z0-9]+)\s*(?:\[([0-9,\s]*)\])?\s*")

Batch = dict[str, np.ndarray]


class SchemaError(ValueError):
    """A schema, or data that does not match it. The message names the column and,
    for data, the record index (and the file and line, when the source knows them)."""


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # NumPy name, one of SUPPORTED_DTYPES
    shape: tuple[int, ...] = ()

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def size(self) -> int:
        """Values per record."""
        return math.prod(self.shape)

    @property
    def record_bytes(self) -> int:
        return self.np_dtype.itemsize * self.size

    def describe(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class Schema:
    """Ordered columns; validated on construction (SchemaError names the first problem)."""

    columns: tuple[Column, ...]

    def __post_init__(self) -> None:
        if not self.columns:
            raise SchemaError("schema has no columns; at least one is required")
        seen: set[str] = set()
        for c in self.columns:
            if not COLUMN_NAME_RE.fullmatch(c.name):
                raise SchemaError(
                    f"invalid column name {c.name!r}: expected 1-128 characters of [A-Za-z0-9_.-] "
                    "starting with a letter or underscore"
                )
            if c.name in seen:
                raise SchemaError(f"column {c.name!r} appears more than once in the schema")
            seen.add(c.name)
            if c.dtype not in SUPPORTED_DTYPES:
                raise SchemaError(
                    f"column {c.name!r} has dtype {c.dtype!r}; expected one of {list(SUPPORTED_DTYPES)}"
                )
            if any(d < 0 for d in c.shape):
                raise SchemaError(f"column {c.name!r} has a negative dimension in shape {list(c.shape)}")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def record_bytes(self) -> int:
        return sum(c.record_bytes for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def describe(self) -> str:
        return ", ".join(f"{c.name}: {c.describe()}" for c in self.columns)

    # -- construction -----------------------------------------------------------

    @staticmethod
    def of(columns: Sequence[tuple[str, str] | tuple[str, str, Sequence[int]] | Column]) -> Schema:
        """Schema.of([("x", "float32", [3]), ("y", "int64")])."""
        out = []
        for c in columns:
            if isinstance(c, Column):
                out.append(c)
            else:
                name, dtype, *rest = c
                out.append(
                    Column(name, _dtype_name(dtype, name), tuple(int(d) for d in (rest[0] if rest else ())))
                )
        return Schema(tuple(out))

    @staticmethod
    def parse(spec: str) -> Schema:
        """From 'x:float32[3,4],y:int64' (the CLI's --columns)."""
        columns = []
        for part in _split_top(spec):
            m = _SPEC_RE.fullmatch(part)
            if m is None:
                raise SchemaError(f"column spec {part!r} is not NAME:DTYPE or NAME:DTYPE[D0,D1,...]")
            name, dtype, dims = m.groups()
            shape = tuple(int(d) for d in dims.split(",") if d.strip()) if dims else ()
            columns.append(Column(name, _dtype_name(dtype, name), shape))
        return Schema(tuple(columns))

    @staticmethod
    def from_json(value: Any) -> Schema:
        """From [{"name", "dtype", "shape"}, ...] or {"columns": [...]} (a schema.json file)."""
        items = value.get("columns") if isinstance(value, dict) else value
        if not isinstance(items, list):
            raise SchemaError(
                'a schema is a list of {"name", "dtype", "shape"} objects, or {"columns": [...]}'
            )
        columns = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not {"name", "dtype"} <= set(item):
                raise SchemaError(f"schema entry {i} is {item!r}; expected an object with name and dtype")
            if set(item) - {"name", "dtype", "shape"}:
                raise SchemaError(
                    f"schema entry {i} has unknown keys {sorted(set(item) - {'name', 'dtype', 'shape'})}"
                )
            shape = item.get("shape", [])
            if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
                raise SchemaError(f"column {item['name']!r} has shape {shape!r}; expected a list of integers")
            columns.append(Column(str(item["name"]), _dtype_name(item["dtype"], item["name"]), tuple(shape)))
        return Schema(tuple(columns))

    @staticmethod
    def load(path: Path) -> Schema:
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise SchemaError(f"cannot read schema file {path}: {e}") from None
        try:
            return Schema.from_json(value)
        except SchemaError as e:
            raise SchemaError(f"{path}: {e}") from None

    def to_json(self) -> list[dict[str, Any]]:
        return [{"name": c.name, "dtype": c.dtype, "shape": list(c.shape)} for c in self.columns]

    @staticmethod
    def infer(batch: Mapping[str, np.ndarray]) -> Schema:
        """The schema of column arrays (first axis = records), in the batch's column order."""
        columns = []
        for name, arr in batch.items():
            arr = np.asarray(arr)
            if arr.ndim == 0:
                raise SchemaError(f"column {name!r} is a scalar; expected one entry per record")
            columns.append(Column(name, _dtype_name(arr.dtype, name), tuple(arr.shape[1:])))
        return Schema(tuple(columns))

    # -- validation ---------------------------------------------------------------

    def conform(self, batch: Mapping[str, Any], first_record: int = 0, where: str = "") -> Batch:
        """The batch as arrays of exactly this schema: [n, *shape] in the column's dtype.

        A value is cast when that loses nothing (int32 -> int64, int -> float32,
        an in-range int64 -> uint8); anything else is SchemaError naming the
        column and the index of the first record that does not fit (records
        count from `first_record`; `where` prefixes the message, e.g. a file).
        """
        prefix = f"{where}: " if where else ""
        missing = [n for n in self.names if n not in batch]
        if missing:
            raise SchemaError(
                f"{prefix}record {first_record}: missing column(s) {missing}; the schema has {self.names}"
            )
        extra = [n for n in batch if n not in self.names]
        if extra:
            raise SchemaError(
                f"{prefix}record {first_record}: unknown column(s) {extra}; the schema has {self.names}"
            )
        out: Batch = {}
        n: int | None = None
        first = ""
        for c in self.columns:
            raw = batch[c.name]
            arr = raw if isinstance(raw, np.ndarray) else _asarray(raw, c, first_record, prefix)
            if arr.ndim != len(c.shape) + 1 or tuple(arr.shape[1:]) != c.shape:
                want = "[n" + "".join(f",{d}" for d in c.shape) + "]"
                raise SchemaError(
                    f"{prefix}column {c.name!r}, records from {first_record}: shape {list(arr.shape)} "
                    f"but the schema expects {want} (records of {c.describe()})"
                )
            if n is None:
                n, first = int(arr.shape[0]), c.name
            elif arr.shape[0] != n:
                raise SchemaError(
                    f"{prefix}records from {first_record}: column {c.name!r} has {arr.shape[0]} records "
                    f"but column {first!r} has {n}"
                )
            out[c.name] = cast(arr, c, first_record, prefix)
        return out


def cast(arr: np.ndarray, c: Column, first_record: int, prefix: str = "") -> np.ndarray:
    """`arr` ([n, *shape]) in c's dtype. Widening is free; narrowing only when every value
    survives (an int64 of 7 -> uint8, a float64 -> float32 that stays finite); a float
    never becomes an integer. SchemaError names the first record that does not fit."""
    want = c.np_dtype
    if arr.dtype == want:
        return arr
    where = f"{prefix}column {c.name!r}, records from {first_record}"
    if arr.dtype.kind not in "biuf":
        raise SchemaError(f"{where}: dtype {arr.dtype} but the schema expects {c.dtype}")
    if arr.dtype.kind == "f" and want.kind in "biu":
        raise SchemaError(
            f"{where}: dtype {arr.dtype} but the schema expects {c.dtype} (floats are not cast)"
        )
    with np.errstate(all="ignore"):
        out = arr.astype(want)
        if np.can_cast(arr.dtype, want, casting="safe") or (want.kind == "f" and arr.dtype.kind in "biu"):
            return out
        ok = np.isfinite(out) | ~np.isfinite(arr) if want.kind == "f" else out.astype(arr.dtype) == arr
    rows = ok.reshape(len(arr), -1).all(axis=1)
    if rows.all():
        return out
    i = int(np.argmin(rows))
    value = arr[i].ravel()[:4].tolist()
    raise SchemaError(
        f"{prefix}column {c.name!r}, record {first_record + i}: value {value} does not fit {c.dtype}"
    )


def _asarray(raw: Any, c: Column, first_record: int, prefix: str) -> np.ndarray:
    try:
        arr = np.asarray(raw)
    except ValueError as e:  # ragged lists
        raise SchemaError(f"{prefix}column {c.name!r}, records from {first_record}: {e}") from None
    if arr.dtype.kind not in "biuf":
        raise SchemaError(
            f"{prefix}column {c.name!r}, records from {first_record}: values of dtype {arr.dtype} "
            f"but the schema expects {c.dtype}"
        )
    return arr


def _dtype_name(dtype: Any, column: Any) -> str:
    try:
        name = np.dtype(dtype).name
    except TypeError:
        raise SchemaError(
            f"column {column!r} has dtype {dtype!r}; expected one of {list(SUPPORTED_DTYPES)}"
        ) from None
    if name not in SUPPORTED_DTYPES:
        raise SchemaError(f"column {column!r} has dtype {name}; expected one of {list(SUPPORTED_DTYPES)}")
    return name


def _split_top(spec: str) -> list[str]:
    """Split 'a:f32[3,4],b:i64' on the commas outside brackets."""
    parts, depth, cur = [], 0, []
    for ch in spec:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]
