"""Start-up recovery of the data dir and durability of the store (core, in-process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ingest_svc.core.ingest import DataDirInUse
from ingest_svc.core.schema import FeatureSpec, Schema
from ingest_svc.tests.conftest import make_core

pytestmark = pytest.mark.unit

SCHEMA = Schema.build([FeatureSpec("x", "float32", (4,)), FeatureSpec("y", "int64", ())])


def records(n: int, start: int = 0) -> dict[str, np.ndarray]:
    idx = np.arange(start, start + n)
    return {"x": np.repeat(idx[:, None], 4, axis=1).astype(np.float32), "y": idx.astype(np.int64)}


def test_recover_removes_debris_and_keeps_committed_partitions(data_dir: Path) -> None:
    core = make_core(data_dir)
    core.catalog.create_dataset("ds", SCHEMA, 4096)
    session = core.open_append("ds")
    session.add(records(10))
    parts = session.finish()
    assert [p.partition_id for p in parts] == [0]
    # Debris of an interrupted stream: a staged temp file, and a file renamed into
    # place whose metadata never committed.
    stale = core.open_append("ds")
    stale.add(records(300))  # 300 * 24 bytes > 4096: full partitions get written
    stale.flush()
    ds_dir = data_dir / "datasets" / "ds"
    temps = [p for p in ds_dir.iterdir() if p.name.startswith(".tmp-")]
    assert temps
    (ds_dir / "part-00000007.bin").write_bytes(b"never committed")
    (data_dir / "datasets" / "ghost").mkdir()
    core.close()

    core = make_core(data_dir)
    try:
        removed = core.recover()
        assert removed == {"temp_files": len(temps), "orphan_partitions": 1, "orphan_dirs": 1}
        assert sorted(p.name for p in ds_dir.iterdir()) == ["part-00000000.bin"]
        assert not (data_dir / "datasets" / "ghost").exists()
        data = core.catalog.load_partition("ds", 0)
        np.testing.assert_array_equal(data.column("y"), np.arange(10))
        assert core.catalog.get_dataset("ds").num_records == 10
    finally:
        core.close()


def test_abort_after_flush_deletes_staged_files(data_dir: Path) -> None:
    core = make_core(data_dir)
    try:
        core.catalog.create_dataset("ds", SCHEMA, 4096)
        session = core.open_append("ds")
        assert session.add(records(400))
        session.flush()
        assert any((data_dir / "datasets" / "ds").iterdir())
        session.abort()
        session.abort()  # idempotent
        assert list((data_dir / "datasets" / "ds").iterdir()) == []
    finally:
        core.close()


def test_abort_after_commit_keeps_the_partitions(data_dir: Path) -> None:
    core = make_core(data_dir)
    try:
        core.catalog.create_dataset("ds", SCHEMA, 4096)
        session = core.open_append("ds")
        session.add(records(5))
        session.finish()
        session.abort()
        assert [p.name for p in (data_dir / "datasets" / "ds").iterdir()] == ["part-00000000.bin"]
    finally:
        core.close()


def test_a_second_core_on_the_same_data_dir_is_refused(data_dir: Path) -> None:
    core = make_core(data_dir)
    try:
        with pytest.raises(DataDirInUse, match="in use by another ingest process"):
            make_core(data_dir)
    finally:
        core.close()
    make_core(data_dir).close()  # released on close
