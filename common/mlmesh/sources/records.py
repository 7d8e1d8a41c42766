"""Sources over Python objects: an iterable of records, or of column batches."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from mlmesh.sources.base import BATCH_BYTES, Source, records_per_batch
from mlmesh.sources.schema import Batch, Column, Schema, SchemaError


def _peek(items: Iterable[Any], what: str) -> tuple[Any, Iterator[Any]]:
    it = iter(items)
    try:
        first = next(it)
    except StopIteration:
        raise SchemaError(
            f"no schema given and the {what} is empty, so there is nothing to infer it from"
        ) from None
    return first, itertools.chain([first], it)


class RecordSource(Source):
    """An iterable of records, each a mapping column -> value (a scalar or a
    per-record array such as a [28, 28] image).

    Without a schema, the first record declares it: Python ints become int64,
    floats float64, bools bool, nested lists and arrays keep their shape and
    dtype. The iterable is consumed once, lazily.
    """

    def __init__(self, records: Iterable[Mapping[str, Any]], schema: Schema | None = None) -> None:
        if schema is None:
            first, records = _peek(records, "record iterable")
            schema = Schema.infer({k: np.asarray(v)[None] for k, v in first.items()})
        self.schema = schema
        self._records = records

    def batches(self, target_bytes: int = BATCH_BYTES) -> Iterator[Batch]:
        size = records_per_batch(self.schema, target_bytes)
        names = self.schema.names
        keys = set(names)
        start = 0
        it = iter(self._records)
        while chunk := list(itertools.islice(it, size)):
            for i, rec in enumerate(chunk):
                if rec.keys() != keys:
                    missing = [n for n in names if n not in rec]
                    what = (
                        f"missing column(s) {missing}"
                        if missing
                        else f"unknown column(s) {sorted(set(rec) - keys)}"
                    )
                    raise SchemaError(f"record {start + i}: {what}; the schema has {names}")
            columns = {c.name: _stack([rec[c.name] for rec in chunk], c, start) for c in self.schema.columns}
            try:
                batch = self.schema.conform(columns, start)
            except SchemaError:
                # A batch-level error names the batch; find the record that caused it.
                for i, rec in enumerate(chunk):
                    self.schema.conform({k: np.asarray(v)[None] for k, v in rec.items()}, start + i)
                raise
            yield batch
            start += len(chunk)


def _stack(values: list[Any], c: Column, start: int) -> np.ndarray:
    """[n, *shape] from per-record values; SchemaError names the first record that is off."""
    try:
        arr = np.asarray(values)
    except ValueError:  # ragged
        arr = None
    if arr is not None and arr.dtype.kind in "biuf" and arr.shape[1:] == c.shape:
        return arr
    for i, v in enumerate(values):
        a = np.asarray(v) if not isinstance(v, np.ndarray) else v
        if a.shape != c.shape:
            raise SchemaError(
                f"column {c.name!r}, record {start + i}: shape {list(a.shape)} but the schema expects "
                f"{list(c.shape)} ({c.describe()})"
            )
        if a.dtype.kind not in "biuf":
            raise SchemaError(
                f"column {c.name!r}, record {start + i}: value {v!r} is not a number ({c.describe()})"
            )
    raise SchemaError(f"column {c.name!r}, records from {start}: values do not form {c.describe()} records")


class ColumnBatchSource(Source):
    """An iterable of column batches: mappings column -> [n, *shape] array, one n per batch.

    Without a schema, the first batch declares it (its column order and dtypes).
    Batches are passed on as they come (not re-cut), after being checked.
    """

    def __init__(self, batches: Iterable[Mapping[str, Any]], schema: Schema | None = None) -> None:
        if schema is None:
            first, batches = _peek(batches, "batch iterable")
            schema = Schema.infer({k: np.asarray(v) for k, v in first.items()})
        self.schema = schema
        self._batches = batches

    def batches(self, target_bytes: int = BATCH_BYTES) -> Iterator[Batch]:
        start = 0
        for b in self._batches:
            batch = self.schema.conform(b, start)
            n = len(next(iter(batch.values())))
            if n:
                yield batch
            start += n


class ArraySource(Source):
    """Column arrays already in memory (or memory-mapped), cut into batches of views."""

    def __init__(self, arrays: Mapping[str, np.ndarray], schema: Schema | None = None) -> None:
        self._arrays = {k: np.asarray(v) if not isinstance(v, np.ndarray) else v for k, v in arrays.items()}
        self.schema = schema if schema is not None else Schema.infer(self._arrays)
        counts = {k: len(v) for k, v in self._arrays.items() if v.ndim}
        if len(set(counts.values())) > 1:
            raise SchemaError(f"columns have different record counts: {counts}")
        self.total = next(iter(counts.values()), 0)

    def batches(self, target_bytes: int = BATCH_BYTES) -> Iterator[Batch]:
        size = records_per_batch(self.schema, target_bytes)
        assert self.total is not None
        for start in range(0, self.total, size):
            yield self.schema.conform({k: v[start : start + size] for k, v in self._arrays.items()}, start)
