"""Group commit: concurrent writers share commits; one's error undoes only its own work."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from ingest_svc.core.db import Database

pytestmark = pytest.mark.unit


def test_concurrent_writes_all_land_and_a_failing_one_undoes_only_itself(tmp_path) -> None:
    db = Database(tmp_path / "meta.sqlite")
    with db.transaction() as conn:
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    commits = 0
    real_transaction = db.transaction

    def counting():  # type: ignore[no-untyped-def]
        nonlocal commits
        commits += 1
        return real_transaction()

    db.transaction = counting  # type: ignore[method-assign]
    errors: dict[int, BaseException] = {}
    start = threading.Barrier(16)

    def writer(i: int) -> None:
        def work(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT INTO t VALUES (?, ?)", (i, f"v{i}"))
            time.sleep(0.002)  # a leader's batch takes long enough for the others to queue
            if i == 7:
                raise ValueError("bad piece")
            return i

        start.wait()
        try:
            assert db.write(work) == i
        except ValueError as e:
            errors[i] = e

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert list(errors) == [7]
    with db.read() as conn:
        keys = [k for (k,) in conn.execute("SELECT k FROM t ORDER BY k")]
    assert keys == [i for i in range(16) if i != 7]
    assert commits < 16  # some writers shared a commit
    db.close()
    reopened = Database(tmp_path / "meta.sqlite")  # and it is all durable on disk
    with reopened.read() as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 15
    reopened.close()
