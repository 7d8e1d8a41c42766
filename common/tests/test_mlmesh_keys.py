"""Placement math shared by workers and shards (mlmesh.keys)."""

from __future__ import annotations

import numpy as np
import pytest
from mlmesh import keys

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("num_shards", [1, 2, 3, 7])
def test_split_then_scatter_back_restores_request_order(num_shards: int) -> None:
    rng = np.random.default_rng(num_shards)
    rows = rng.integers(0, 1000, size=200)
    parts = keys.split_rows(rows, num_shards)
    assert len(parts) == num_shards
    merged = np.full_like(rows, -1)
    for shard, (pos, ids) in enumerate(parts):
        assert np.all(keys.row_shard(ids, num_shards) == shard)
        merged[pos] = ids
    np.testing.assert_array_equal(merged, rows)


@pytest.mark.parametrize("total", [0, 1, 2, 5, 100, 101])
@pytest.mark.parametrize("num_shards", [1, 2, 3, 8])
def test_local_rows_sum_to_total(total: int, num_shards: int) -> None:
    assert sum(keys.local_rows(total, s, num_shards) for s in range(num_shards)) == total


def test_shard_slice_matches_local_rows_and_global_ids() -> None:
    full = np.arange(10 * 3).reshape(10, 3)
    for shard in range(3):
        local = keys.shard_slice(full, shard, 3)
        assert len(local) == keys.local_rows(10, shard, 3)
        gids = keys.to_global(np.arange(len(local)), shard, 3)
        np.testing.assert_array_equal(local, full[gids])
        np.testing.assert_array_equal(keys.to_local(gids, 3), np.arange(len(local)))


def test_dense_shard_is_stable_and_in_range() -> None:
    names = [f"dense_{i}/kernel" for i in range(50)]
    first = [keys.dense_shard(n, 4) for n in names]
    assert first == [keys.dense_shard(n, 4) for n in names]
    assert set(first) <= {0, 1, 2, 3}
    assert len(set(first)) > 1  # a hash, not a constant
    assert keys.dense_shard("anything", 1) == 0


def test_bad_shard_counts_raise() -> None:
    with pytest.raises(ValueError, match="num_shards must be positive, got 0"):
        keys.dense_shard("w", 0)
    with pytest.raises(ValueError, match=r"shard 3 is outside 0..2"):
        keys.local_rows(10, 3, 3)
