"""Sources users have, as column batches checked against a declared schema.

    from mlmesh import sources
    from mlmesh.clients import IngestClient

    src = sources.open_file(Path("readings.csv"), sources.Schema.parse("t:int64,x:float32[3]"))
    # or sources.RecordSource(({"t": i, "x": [0.0, 1.0, 2.0]} for i in range(10)))
    with IngestClient(addr) as client:
        client.create_dataset("readings", src.schema)
        client.append("readings", src.batches())

Files are streamed (CSV and Parquet in batches, .npy memory-mapped, .npz
members read record by record): nothing is loaded whole. Every batch is
checked before it is sent; a record that does not fit raises SchemaError
naming the column, the record index and, for files, the line.
"""

from __future__ import annotations

from pathlib import Path

from mlmesh.sources.base import BATCH_BYTES, Source, records_per_batch
from mlmesh.sources.csvfile import CsvSource
from mlmesh.sources.npfile import NpySource, NpzSource
from mlmesh.sources.parquetfile import ParquetSource
from mlmesh.sources.records import ArraySource, ColumnBatchSource, RecordSource
from mlmesh.sources.schema import Batch, Column, Schema, SchemaError

FORMATS = {
    ".csv": CsvSource,
    ".parquet": ParquetSource,
    ".pq": ParquetSource,
    ".npy": NpySource,
    ".npz": NpzSource,
}


def format_of(path: Path) -> str:
    """The file's format by suffix ('.csv', ...); SchemaError for an unknown one."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise SchemaError(
            f"{path}: unknown format {suffix or '(no suffix)'!r}; expected one of {sorted(FORMATS)}"
        )
    return suffix


def open_file(path: Path, schema: Schema | None = None) -> Source:
    """A source over one file, its format from the suffix."""
    return FORMATS[format_of(path)](path, schema)


__all__ = [
    "BATCH_BYTES",
    "FORMATS",
    "ArraySource",
    "Batch",
    "Column",
    "ColumnBatchSource",
    "CsvSource",
    "NpySource",
    "NpzSource",
    "ParquetSource",
    "RecordSource",
    "Schema",
    "SchemaError",
    "Source",
    "format_of",
    "open_file",
    "records_per_batch",
]
