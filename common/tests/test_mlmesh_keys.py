"""Placement math shared by workers and shards (mlmesh.keys)."""

from __future__ import annotations

import numpy as np
import pytest
from mlmesh import keys

pytestmark = pytest.mark.unit


LAYOUTS = list(keys.RowLayout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("num_shards", [1, 2, 3, 7])
def test_split_then_scatter_back_restores_request_order(num_shards: int, layout: keys.RowLayout) -> None:
    rng = np.random.default_rng(num_shards)
    rows = rng.integers(0, 1000, size=200)
    placement = keys.row_placement(1000, num_shards, layout)
    parts = placement.split(rows)
    assert len(parts) == num_shards
    merged = np.full_like(rows, -1)
    for shard, (pos, ids) in enumerate(parts):
        assert np.all(placement.owner(ids) == shard)
        merged[pos] = ids
    np.testing.assert_array_equal(merged, rows)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("total", [0, 1, 2, 5, 100, 101])
@pytest.mark.parametrize("num_shards", [1, 2, 3, 8])
def test_every_row_has_exactly_one_home(total: int, num_shards: int, layout: keys.RowLayout) -> None:
    placement = keys.row_placement(total, num_shards, layout)
    assert sum(placement.count(s) for s in range(num_shards)) == total
    seen = np.concatenate([placement.global_rows(s) for s in range(num_shards)])
    np.testing.assert_array_equal(np.sort(seen), np.arange(total))
    for s in range(num_shards):
        held = placement.global_rows(s)
        np.testing.assert_array_equal(placement.local(held), np.arange(len(held)))
        assert np.all(placement.owner(held) == s)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_shard_slices_reassemble_the_full_array(layout: keys.RowLayout) -> None:
    full = np.arange(11 * 3).reshape(11, 3)
    placement = keys.row_placement(11, 3, layout)
    parts = [placement.shard_slice(full, s) for s in range(3)]
    for s, part in enumerate(parts):
        np.testing.assert_array_equal(part, full[placement.global_rows(s)])
    np.testing.assert_array_equal(placement.assemble(parts), full)


def test_blocks_are_contiguous_and_balanced() -> None:
    placement = keys.row_placement(10, 3, keys.RowLayout.BLOCKS)
    assert [placement.global_rows(s).tolist() for s in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    full = np.arange(10)
    assert np.shares_memory(placement.shard_slice(full, 1), full)  # a view: no copy to split a gradient


def test_hash_spreads_consecutive_ids_unlike_modulo() -> None:
    owners = keys.row_placement(1000, 2).owner(np.arange(1000))
    assert 400 < owners.sum() < 600
    assert not np.array_equal(owners, np.arange(1000) % 2)


def test_zipf_ids_load_the_busiest_of_two_shards_at_most_1_15x_the_mean() -> None:
    """Issue 5: Zipf(1.1) ids over 1M rows. Load = rows a shard serves per step (a worker
    pulls each distinct id once) and, stricter, raw lookups before de-duplication."""
    total, batch, steps = 1_000_000, 1024, 100
    p = np.arange(1, total + 1, dtype=np.float64) ** -1.1
    cdf = np.cumsum(p) / p.sum()
    rng = np.random.default_rng(5)
    placement = keys.row_placement(total, 2)
    served = np.zeros(2)
    lookups = np.zeros(2)
    for _ in range(steps):
        ids = np.searchsorted(cdf, rng.random(batch))  # id 0 the most popular
        served += np.bincount(placement.owner(np.unique(ids)), minlength=2)
        lookups += np.bincount(placement.owner(ids), minlength=2)
    assert served.max() / served.mean() <= 1.15
    assert lookups.max() / lookups.mean() <= 1.15


def test_balance_spreads_bytes_largest_first() -> None:
    sizes = {"big": 800, "a": 300, "b": 300, "c": 200, "tiny": 10}
    owners = keys.balance(sizes, 2)
    load = [sum(v for k, v in sizes.items() if owners[k] == s) for s in range(2)]
    assert owners["big"] == 0 and sorted(load) == [800, 810]
    assert keys.balance(sizes, 2) == owners  # deterministic
    assert keys.balance({"x": 5}, 3, preload=[9, 1, 4]) == {"x": 1}


def test_bad_shard_counts_raise() -> None:
    with pytest.raises(ValueError, match="num_shards must be positive, got 0"):
        keys.balance({"w": 1}, 0)
    with pytest.raises(ValueError, match=r"shard 3 is outside 0..2"):
        keys.local_rows(10, 3, 3)
    with pytest.raises(ValueError, match="preload has 1 entries for 2 shards"):
        keys.balance({"w": 1}, 2, preload=[0])


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
