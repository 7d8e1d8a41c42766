"""Cutting a partition's columns into shuffled mini-batches. Pure NumPy."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
from mlmesh.errors import InvalidArgument


def iter_slices(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """[start, stop) bounds covering range(n) in batches; the last may be short."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def num_records(columns: Mapping[str, np.ndarray]) -> int:
    """The common length of the columns; InvalidArgument if they disagree."""
    lengths = {name: len(col) for name, col in columns.items()}
    if len(set(lengths.values())) > 1:
        raise InvalidArgument(f"columns have different lengths: {lengths}")
    return next(iter(lengths.values()), 0)


def shuffled_batches(
    columns: Mapping[str, np.ndarray], batch_size: int, rng: np.random.Generator
) -> Iterator[dict[str, np.ndarray]]:
    """Every record exactly once, in a random order, in batches of `batch_size`
    (the last one shorter if the count does not divide)."""
    n = num_records(columns)
    order = rng.permutation(n)
    for start, stop in iter_slices(n, batch_size):
        idx = order[start:stop]
        yield {name: col[idx] for name, col in columns.items()}


def batch_seed(job_seed: int, epoch: int, partition_id: int, attempt: int) -> list[int]:
    """Seed material for a task's shuffle: reproducible per (job, epoch, partition, attempt)."""
    return [job_seed & 0xFFFFFFFF, epoch, partition_id, attempt]
