"""Shuffled mini-batches of a partition (pure)."""

from __future__ import annotations

import numpy as np
import pytest
from mlmesh.errors import InvalidArgument

from trainer_svc.core.batching import batch_seed, iter_slices, shuffled_batches

pytestmark = pytest.mark.unit


def columns(n: int) -> dict[str, np.ndarray]:
    return {"x": np.arange(n * 2).reshape(n, 2), "label": np.arange(n)}


def test_every_record_appears_exactly_once_with_rows_kept_together() -> None:
    batches = list(shuffled_batches(columns(10), 4, np.random.default_rng(0)))
    assert [len(b["label"]) for b in batches] == [4, 4, 2]
    labels = np.concatenate([b["label"] for b in batches])
    assert sorted(labels.tolist()) == list(range(10))
    assert labels.tolist() != list(range(10))  # shuffled
    for b in batches:
        np.testing.assert_array_equal(b["x"][:, 0], b["label"] * 2)


def test_same_seed_same_order_other_seed_other_order() -> None:
    def order(seed: list[int]) -> list[int]:
        return np.concatenate(
            [b["label"] for b in shuffled_batches(columns(50), 8, np.random.default_rng(seed))]
        ).tolist()

    assert order(batch_seed(7, 0, 3, 1)) == order(batch_seed(7, 0, 3, 1))
    assert order(batch_seed(7, 0, 3, 1)) != order(batch_seed(7, 1, 3, 1))
    assert order(batch_seed(-7, 0, 3, 1)) == order(batch_seed(-7, 0, 3, 1))  # negative job seeds work


def test_columns_of_different_lengths_are_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="columns have different lengths"):
        list(shuffled_batches({"x": np.zeros(3), "label": np.zeros(4)}, 2, np.random.default_rng(0)))


def test_slices_cover_the_range() -> None:
    assert list(iter_slices(5, 2)) == [(0, 2), (2, 4), (4, 5)]
    assert list(iter_slices(0, 2)) == []
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        list(iter_slices(5, 0))
