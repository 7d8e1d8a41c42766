"""What every source is: a schema and an iterator of conformed column batches."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

from mlmesh.sources.schema import Batch, Schema

BATCH_BYTES = 1 << 20


def records_per_batch(schema: Schema, target_bytes: int = BATCH_BYTES) -> int:
    """Records in a batch of about `target_bytes` (at least one)."""
    return max(1, target_bytes // max(1, schema.record_bytes))


class Source(ABC):
    """Records in column batches, every batch already checked against `schema`.

    `batches()` streams: it holds about one batch in memory, never the whole
    source, and raises SchemaError (naming the column, the record index and,
    for files, the line) at the first record that does not fit. A source is
    read by one consumer at a time.
    """

    schema: Schema
    # Records the source holds, when known up front (for progress bars).
    total: int | None = None

    @abstractmethod
    def batches(self, target_bytes: int = BATCH_BYTES) -> Iterator[Batch]: ...

    def __iter__(self) -> Iterator[Batch]:
        return self.batches()
