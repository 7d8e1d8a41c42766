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


def test_variables_at_or_above_the_threshold_are_partitioned() -> None:
    # float32 [1600, 128] is 800 KiB: the Fashion-MNIST CNN's dense kernel.
    assert keys.partitioned((1600, 128), 4, 2)
    assert keys.partitioned((256, 256), 4, 2, min_partition_bytes=256 * 1024)  # exactly the threshold
    assert not keys.partitioned((256, 255), 4, 2, min_partition_bytes=256 * 1024)
    assert not keys.partitioned((3, 3, 32, 64), 4, 2)  # 72 KiB conv kernel stays whole


def test_the_default_threshold_is_256_kib() -> None:
    assert keys.MIN_PARTITION_BYTES == 256 * 1024
    assert keys.partitioned((64 * 1024,), 4, 2) and not keys.partitioned((64 * 1024 - 1,), 4, 2)


def test_itemsize_counts() -> None:
    assert not keys.partitioned((1000, 100), 2, 2, min_partition_bytes=300_000)
    assert keys.partitioned((1000, 100), 4, 2, min_partition_bytes=300_000)


@pytest.mark.parametrize(
    ("shape", "num_shards"),
    [
        ((), 2),  # a scalar has no rows
        ((3, 1_000_000), 4),  # fewer rows than shards
        ((1_000_000,), 1),  # one shard: nothing to balance
    ],
)
def test_never_partitioned(shape: tuple[int, ...], num_shards: int) -> None:
    assert not keys.partitioned(shape, 8, num_shards, min_partition_bytes=0)


def test_zero_threshold_partitions_every_variable_with_a_row_per_shard() -> None:
    assert keys.partitioned((2,), 4, 2, min_partition_bytes=0)
    assert keys.partitioned((0, 5), 4, 1, min_partition_bytes=0) is False


def test_bad_partition_arguments_raise() -> None:
    with pytest.raises(ValueError, match="num_shards must be positive, got 0"):
        keys.partitioned((10,), 4, 0)
    with pytest.raises(ValueError, match="min_partition_bytes must be >= 0, got -1"):
        keys.partitioned((10,), 4, 2, min_partition_bytes=-1)
