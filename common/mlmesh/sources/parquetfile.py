"""Parquet files (pyarrow), read in record batches of about 1 MiB.

A numeric column is a scalar column; a (fixed size) list column, nested for
more dimensions, is a column of that shape. Without a schema the file's own
declares one (fixed size lists give the shape; a variable-length list needs a
declared shape, and every list must then have exactly that length). Nulls
are refused, naming the record.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mlmesh.sources.base import BATCH_BYTES, Source, records_per_batch
from mlmesh.sources.schema import SUPPORTED_DTYPES, Batch, Column, Schema, SchemaError


def _pa() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.compute
        import pyarrow.parquet
    except ImportError:
        raise SchemaError("reading Parquet needs pyarrow (pip install pyarrow)") from None
    return pa


class ParquetSource(Source):
    def __init__(self, path: Path, schema: Schema | None = None) -> None:
        pa = _pa()
        self.path = path
        try:
            self._file = pa.parquet.ParquetFile(path)
        except (OSError, pa.ArrowException) as e:
            raise SchemaError(f"{path}: not a readable Parquet file: {e}") from None
        arrow = self._file.schema_arrow
        if schema is None:
            schema = Schema(tuple(_infer(arrow.field(i), path) for i in range(len(arrow))))
        missing = [n for n in schema.names if arrow.get_field_index(n) < 0]
        if missing:
            raise SchemaError(f"{path}: has no column(s) {missing} (it has {arrow.names})")
        self.schema = schema
        self.total = self._file.metadata.num_rows

    def batches(self, target_bytes: int = BATCH_BYTES) -> Iterator[Batch]:
        pa = _pa()
        size = records_per_batch(self.schema, target_bytes)
        start = 0
        try:
            for rb in self._file.iter_batches(batch_size=size, columns=self.schema.names):
                batch = {
                    c.name: _to_numpy(rb.column(c.name), c, start, self.path) for c in self.schema.columns
                }
                yield self.schema.conform(batch, start, str(self.path))
                start += rb.num_rows
        except pa.ArrowException as e:
            raise SchemaError(f"{self.path}: cannot read records from {start}: {e}") from None


def _infer(field: Any, path: Path) -> Column:
    pa = _pa()
    t, shape = field.type, []
    while pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        if not pa.types.is_fixed_size_list(t):
            raise SchemaError(
                f"{path}: column {field.name!r} is a variable-length list; declare its shape in a schema"
            )
        shape.append(t.list_size)
        t = t.value_type
    try:
        dtype = np.dtype(t.to_pandas_dtype()).name
    except (NotImplementedError, TypeError):
        dtype = str(t)
    if dtype not in SUPPORTED_DTYPES:
        raise SchemaError(
            f"{path}: column {field.name!r} has type {field.type}, which cannot be ingested "
            f"(supported: {list(SUPPORTED_DTYPES)}); declare a schema that leaves it out or casts it"
        )
    return Column(field.name, dtype, tuple(shape))


def _to_numpy(col: Any, c: Column, start: int, path: Path) -> np.ndarray:
    """[n, *c.shape] from an Arrow column; SchemaError names the first bad record."""
    pa = _pa()
    n = len(col)
    if col.null_count:
        i = int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
        raise SchemaError(f"{path}: column {c.name!r}, record {start + i}: is null")
    values, count = col, n
    for depth, dim in enumerate(c.shape):
        t = values.type
        if not (pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)):
            raise SchemaError(
                f"{path}: column {c.name!r} has type {col.type} but the schema expects {c.describe()} "
                f"(dimension {depth} is not a list)"
            )
        lengths = pa.compute.list_value_length(values).to_numpy(zero_copy_only=False)
        if values.null_count or (lengths != dim).any():
            j = int(np.argmax((lengths != dim) | np.isnan(lengths.astype(float))))
            record = start + j // max(1, count // n)
            raise SchemaError(
                f"{path}: column {c.name!r}, record {record}: a list of {lengths[j]} values at "
                f"dimension {depth} but the schema expects {c.describe()}"
            )
        values = values.flatten()
        count *= dim
    t = values.type
    if pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t):
        raise SchemaError(
            f"{path}: column {c.name!r} has type {col.type} but the schema expects {c.describe()}"
        )
    if values.null_count:
        i = int(np.argmax(values.is_null().to_numpy(zero_copy_only=False)))
        raise SchemaError(
            f"{path}: column {c.name!r}, record {start + i // max(1, c.size)}: holds a null value"
        )
    try:
        arr = values.to_numpy(zero_copy_only=False)
    except (pa.ArrowException, NotImplementedError) as e:
        raise SchemaError(f"{path}: column {c.name!r}: {e}") from None
    return arr.reshape((n, *c.shape))
