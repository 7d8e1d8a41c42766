"""The worker's partition cache (real files, real processes)."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from trainer_svc.core import cachefile
from trainer_svc.core.cache import SUFFIX, PartitionCache

pytestmark = pytest.mark.unit

COLUMNS = {"image": np.arange(3 * 4, dtype=np.uint8).reshape(3, 2, 2), "label": np.array([1, 2, 3])}
MIB = 1024 * 1024


def partition(seed: int, records: int = 100) -> dict[str, np.ndarray]:
    """About 10 KB: 100 records of 100 bytes and a label."""
    rng = np.random.default_rng(seed)
    return {
        "x": rng.integers(0, 255, (records, 100), dtype=np.uint8),
        "y": rng.integers(0, 10, records).astype(np.int64),
    }


SIZE = cachefile.encoded_size(partition(0))


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"mlmesh_trainer_worker_cache_{name}", labels) or 0.0


def held(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob(f"*{SUFFIX}"))


def cached(cache: PartitionCache) -> set[int]:
    return {int(p.name.removesuffix(SUFFIX)) for p in cache.root.rglob(f"*{SUFFIX}")}


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# ----- hits and misses -------------------------------------------------------------------------


def test_put_then_get_returns_the_same_columns_read_only(tmp_path: Path) -> None:
    cache = PartitionCache(tmp_path, MIB)
    assert cache.get("fashion-mnist-train", 4, 3) is None
    cache.put("fashion-mnist-train", 4, COLUMNS)
    got = cache.get("fashion-mnist-train", 4, 3)
    assert got is not None and set(got) == set(COLUMNS)
    for name, col in COLUMNS.items():
        np.testing.assert_array_equal(got[name], col)
        assert got[name].dtype == col.dtype and not got[name].flags.writeable
    assert not [p for p in cache.path("fashion-mnist-train", 4).parent.iterdir() if p.name.endswith(".tmp")]


def test_hits_and_misses_are_counted(tmp_path: Path) -> None:
    cache = PartitionCache(tmp_path, MIB)
    hits, misses = metric("hits_total"), metric("misses_total")
    cache.get("d", 0, 3)
    cache.put("d", 0, COLUMNS)
    cache.get("d", 0, 3)
    cache.get("d", 0, 3)
    assert (metric("hits_total") - hits, metric("misses_total") - misses) == (2, 1)


def test_record_count_mismatch_is_a_miss_and_drops_the_file(tmp_path: Path) -> None:
    cache = PartitionCache(tmp_path, MIB)
    cache.put("d", 0, COLUMNS)
    assert cache.get("d", 0, 5) is None
    assert not cache.path("d", 0).exists()


def test_disabled_cache_touches_no_file(tmp_path: Path) -> None:
    cache = PartitionCache(tmp_path / "cache", 0)
    cache.put("d", 0, COLUMNS)
    assert cache.get("d", 0, 3) is None
    assert not (tmp_path / "cache").exists()


def test_a_partition_larger_than_the_bound_is_not_cached(tmp_path: Path) -> None:
    cache = PartitionCache(tmp_path, SIZE - 1)
    cache.put("d", 0, partition(0))
    assert cache.get("d", 0, 100) is None and cached(cache) == set()


def test_an_uncacheable_dtype_is_skipped_not_raised(tmp_path: Path) -> None:
    cache = PartitionCache(tmp_path, MIB)
    cache.put("d", 0, {"s": np.array(["a", "b"], dtype=object)})
    assert cache.get("d", 0, 2) is None


def test_dataset_names_cannot_escape_the_cache_dir(tmp_path: Path) -> None:
    cache = PartitionCache(tmp_path / "cache", MIB)
    root = (tmp_path / "cache").resolve()
    for name in ("../../etc", "..", ".", ".hidden"):
        path = cache.path(name, 1).resolve()
        assert path.is_relative_to(root) and path.parent != root, name


# ----- corruption ------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["a column", "last byte", "header"])
def test_a_flipped_byte_is_a_miss_removed_and_counted(tmp_path: Path, where: str) -> None:
    cache = PartitionCache(tmp_path, MIB)
    cols = partition(0)
    cache.put("d", 0, cols)
    path = cache.path("d", 0)
    offset = {"a column": SIZE // 2, "last byte": SIZE - 1, "header": 30}[where]
    flip_byte(path, offset)
    before = metric("corrupt_total", reason="checksum")
    assert cache.get("d", 0, 100) is None
    assert not path.exists()
    assert metric("corrupt_total", reason="checksum") - before == 1
    cache.put("d", 0, cols)  # what the worker does next: read from ingest, put back
    got = cache.get("d", 0, 100)
    assert got is not None and np.array_equal(got["x"], cols["x"])


def test_a_truncated_file_is_a_miss_removed_and_counted(tmp_path: Path) -> None:
    cache = PartitionCache(tmp_path, MIB)
    cache.put("d", 0, partition(0))
    path = cache.path("d", 0)
    os.truncate(path, SIZE // 2)
    before = metric("corrupt_total", reason="truncated")
    assert cache.get("d", 0, 100) is None
    assert not path.exists() and metric("corrupt_total", reason="truncated") - before == 1


def test_a_file_of_another_format_is_a_miss_and_removed(tmp_path: Path) -> None:
    cache = PartitionCache(tmp_path, MIB)
    cache.put("d", 0, COLUMNS)
    cache.path("d", 0).write_bytes(b"PK\x03\x04 an npz from an older worker" * 10)
    before = metric("corrupt_total", reason="format")
    assert cache.get("d", 0, 3) is None
    assert not cache.path("d", 0).exists() and metric("corrupt_total", reason="format") - before == 1


# ----- the bound and LRU -----------------------------------------------------------------------


def test_the_least_recently_used_partition_is_evicted_first(tmp_path: Path) -> None:
    cache = PartitionCache(tmp_path, 3 * SIZE)
    for p in range(3):
        cache.put("d", p, partition(p))
    assert cache.get("d", 0, 100) is not None  # 0 is now the most recent; 1 the least
    evictions = metric("evictions_total")
    cache.put("d", 3, partition(3))
    assert cached(cache) == {0, 2, 3}
    cache.put("d", 4, partition(4))
    assert cached(cache) == {0, 3, 4}
    assert metric("evictions_total") - evictions == 2


def test_the_bound_holds_over_many_puts(tmp_path: Path) -> None:
    cache = PartitionCache(tmp_path, int(4.5 * SIZE))
    for p in range(20):
        cache.put("d", p, partition(p))
        assert held(tmp_path) <= cache.max_bytes
    assert cached(cache) == {16, 17, 18, 19}
    assert metric("bytes") == held(tmp_path)


def test_replacing_a_partition_does_not_evict_another(tmp_path: Path) -> None:
    cache = PartitionCache(tmp_path, 2 * SIZE)
    cache.put("d", 0, partition(0))
    cache.put("d", 1, partition(1))
    cache.put("d", 0, partition(0))
    assert cached(cache) == {0, 1}


def test_two_instances_on_one_directory_share_the_bound(tmp_path: Path) -> None:
    a, b = PartitionCache(tmp_path, 2 * SIZE), PartitionCache(tmp_path, 2 * SIZE)
    a.put("d", 0, partition(0))
    b.put("d", 1, partition(1))
    assert b.get("d", 0, 100) is not None  # b sees a's file, and its use counts for LRU
    a.put("d", 2, partition(2))  # evicts 1, which b wrote and nobody used since
    assert cached(a) == {0, 2} and held(tmp_path) <= 2 * SIZE
    assert b.get("d", 1, 100) is None


def test_a_restart_rebuilds_the_index_and_applies_a_smaller_bound(tmp_path: Path) -> None:
    cache = PartitionCache(tmp_path, 4 * SIZE)
    for p in range(4):
        cache.put("d", p, partition(p))
    cache.get("d", 0, 100)
    restarted = PartitionCache(tmp_path, 2 * SIZE)
    assert cached(restarted) == {0, 3}
    assert metric("bytes") == held(tmp_path) == 2 * SIZE


def test_columns_being_used_survive_their_eviction(tmp_path: Path) -> None:
    cache = PartitionCache(tmp_path, SIZE)
    cols = partition(0)
    cache.put("d", 0, cols)
    got = cache.get("d", 0, 100)
    cache.put("d", 1, partition(1))  # evicts 0 while `got` still maps it
    assert cached(cache) == {1}
    assert got is not None and np.array_equal(got["x"], cols["x"])


def test_a_restart_removes_orphaned_temp_files_only(tmp_path: Path) -> None:
    cache = PartitionCache(tmp_path, MIB)
    cache.put("d", 0, COLUMNS)
    orphan = cache.path("d", 0).with_name(".0.part.dead.tmp")
    in_flight = cache.path("d", 0).with_name(".0.part.live.tmp")
    orphan.write_bytes(b"x")
    in_flight.write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(orphan, (two_hours_ago, two_hours_ago))
    PartitionCache(tmp_path, MIB)
    assert not orphan.exists() and in_flight.exists()


# ----- several processes -----------------------------------------------------------------------


def _put_many(root: str, partitions: list[int], rounds: int) -> None:
    cache = PartitionCache(Path(root), int(3.5 * SIZE))
    for _ in range(rounds):
        for p in partitions:
            cache.put("d", p, partition(p))
            got = cache.get("d", p, 100)
            # A sibling may have evicted it in between; what is served is never wrong.
            assert got is None or np.array_equal(got["x"], partition(p)["x"])


def test_concurrent_puts_from_two_processes_leave_valid_files_within_the_bound(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")  # no fork of a test process that may hold threads
    procs = [
        ctx.Process(target=_put_many, args=(str(tmp_path), [0, 1, 2, 3, 4], 10)),
        ctx.Process(target=_put_many, args=(str(tmp_path), [4, 3, 2, 1, 0], 10)),
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    cache = PartitionCache(tmp_path, int(3.5 * SIZE))
    assert 1 <= len(cached(cache)) <= 3 and held(tmp_path) <= cache.max_bytes
    for p in cached(cache):
        got = cache.get("d", p, 100)
        assert got is not None and np.array_equal(got["x"], partition(p)["x"])
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_restart_removes_files_of_the_old_npz_format(tmp_path: Path) -> None:
    old = tmp_path / "d" / "0.npz"
    old.parent.mkdir()
    old.write_bytes(b"PK\x03\x04")
    PartitionCache(tmp_path, MIB)
    assert not old.exists()
