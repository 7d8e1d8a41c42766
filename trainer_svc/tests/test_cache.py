"""The worker's partition cache (real files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer_svc.core.cache import PartitionCache

pytestmark = pytest.mark.unit

COLUMNS = {"image": np.arange(3 * 4, dtype=np.uint8).reshape(3, 2, 2), "label": np.array([1, 2, 3])}


def test_put_then_get_returns_the_same_columns(tmp_path: Path) -> None:
    cache = PartitionCache(tmp_path)
    assert cache.get("fashion-mnist-train", 4, 3) is None
    cache.put("fashion-mnist-train", 4, COLUMNS)
    got = cache.get("fashion-mnist-train", 4, 3)
    assert got is not None and set(got) == set(COLUMNS)
    for name, col in COLUMNS.items():
        np.testing.assert_array_equal(got[name], col)
        assert got[name].dtype == col.dtype
    assert not [p for p in cache.path("fashion-mnist-train", 4).parent.iterdir() if p.name.endswith(".tmp")]


def test_record_count_mismatch_is_a_miss_and_drops_the_file(tmp_path: Path) -> None:
    cache = PartitionCache(tmp_path)
    cache.put("d", 0, COLUMNS)
    assert cache.get("d", 0, 5) is None
    assert not cache.path("d", 0).exists()


def test_corrupt_file_is_a_miss(tmp_path: Path) -> None:
    cache = PartitionCache(tmp_path)
    cache.put("d", 0, COLUMNS)
    cache.path("d", 0).write_bytes(b"not a zip")
    assert cache.get("d", 0, 3) is None


def test_dataset_names_cannot_escape_the_cache_dir(tmp_path: Path) -> None:
    cache = PartitionCache(tmp_path / "cache")
    root = (tmp_path / "cache").resolve()
    for name in ("../../etc", "..", ".", ".hidden"):
        path = cache.path(name, 1).resolve()
        assert path.is_relative_to(root) and path.parent != root, name
