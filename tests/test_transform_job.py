"""`mlmesh transform` against a real ingest process: a pool of worker processes derives a
dataset, every source partition transformed exactly once, also when a worker is killed
mid-partition and when the source grows while the job follows it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mlmesh.clients import IngestClient, schema_of
from mlmesh.ingest.v1 import ingest_pb2

from ingest_svc.tests.process import IngestProcess

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[1]
PER_PARTITION = 350  # 12-byte records: partitions of 4,200 bytes (the minimum is 4,096)
AFFINE = "mlmesh.batch.builtin:affine"


@pytest.fixture
def ingest(tmp_path: Path) -> Iterator[IngestProcess]:
    proc = IngestProcess(tmp_path / "data", tmp_path / "run", "--lease-sweep-seconds", "0.2").start()
    try:
        yield proc
    finally:
        proc.close()


def add_records(addr: str, start: int, n: int, create: bool = False) -> None:
    ids = np.arange(start, start + n, dtype=np.int64)
    arrays = {"id": ids, "x": ids.astype(np.float32)}
    with IngestClient(addr) as client:
        if create:
            client.create_dataset("raw", schema_of(arrays), max_partition_bytes=PER_PARTITION * 12)
        client.append("raw", [arrays])


def target_ids(addr: str) -> tuple[np.ndarray, np.ndarray]:
    from mlmesh.channels import sync_channel
    from mlmesh.ingest.v1 import ingest_pb2_grpc
    from mlmesh.tensor import from_proto

    stub = ingest_pb2_grpc.IngestServiceStub(sync_channel(addr))
    ids, xs = [], []
    for p in stub.ListPartitions(ingest_pb2.ListPartitionsRequest(dataset="cooked"), timeout=30).partitions:
        for resp in stub.ReadPartition(
            ingest_pb2.ReadPartitionRequest(dataset="cooked", partition_id=p.partition_id)
        ):
            ids.append(from_proto(resp.batch.features["id"]))
            xs.append(from_proto(resp.batch.features["x"]))
    return (np.concatenate(ids), np.concatenate(xs)) if ids else (np.zeros(0), np.zeros(0))


def held_by(ingest: IngestProcess, worker: str, state: str = "active") -> int:
    """Leases of `worker` in `state`, read from ingest's own database (read-only)."""
    import sqlite3

    db = sqlite3.connect(f"file:{ingest.data_dir / 'meta.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        q = "SELECT count(*) FROM leases WHERE worker_id = ? AND state = ?"
        return int(db.execute(q, (worker, state)).fetchone()[0])
    finally:
        db.close()


def mlmesh(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlmesh.cli.main", "transform", *args]


def test_a_pool_transforms_every_partition_once_and_survives_a_killed_worker(ingest: IngestProcess) -> None:
    add_records(ingest.addr, 0, 20 * PER_PARTITION, create=True)  # 20 partitions
    job = "transform:raw->cooked"
    common = ["--ingest-addr", ingest.addr, "--source", "raw", "--target", "cooked", "--transform", AFFINE,
              "--arg", "scale=2", "--arg", "shift=1", "--arg", "delay_seconds=0.3"]  # fmt: skip
    run = subprocess.Popen(mlmesh("run", *common, "--workers", "1"), cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)  # fmt: skip
    # A second worker joins by hand (scaling up), and is killed mid-partition.
    extra = subprocess.Popen(
        mlmesh("worker", *[a for a in common if a != "--workers"], "--job", job, "--worker-id", "extra",
               "--lease-seconds", "2"),
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, process_group=0,
    )  # fmt: skip
    try:
        for _ in range(300):  # until the extra worker holds a lease (it is mid-partition)
            if held_by(ingest, "extra"):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the extra worker never leased a partition")
        os.killpg(extra.pid, signal.SIGKILL)  # holds leases, transforming
        out, _ = run.communicate(timeout=180)
        assert run.returncode == 0, out.decode(errors="replace")
    finally:
        for p in (run, extra):
            if p.poll() is None:
                p.kill()
    ids, xs = target_ids(ingest.addr)
    assert sorted(ids.tolist()) == list(range(20 * PER_PARTITION))  # every record once, none twice
    np.testing.assert_array_equal(xs, ids.astype(np.float32) * 2 + 1)
    with IngestClient(ingest.addr) as client:
        q = client.stub.GetQueueStatus(ingest_pb2.GetQueueStatusRequest(job_id=job), timeout=10).status
    assert q.done and q.completed == 20
    # The killed worker's leases lapsed, and others redid those partitions.
    assert held_by(ingest, "extra", "expired") >= 1


def test_following_a_growing_source_transforms_what_arrives(ingest: IngestProcess) -> None:
    add_records(ingest.addr, 0, 5 * PER_PARTITION, create=True)
    run = subprocess.Popen(
        mlmesh("run", "--ingest-addr", ingest.addr, "--source", "raw", "--target", "cooked",
               "--transform", AFFINE, "--arg", "every=2", "--workers", "2", "--follow",
               "--poll-seconds", "0.2", "--until-idle", "3"),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        for i in range(3):  # the source grows while the job runs
            time.sleep(0.7)
            add_records(ingest.addr, (5 + 2 * i) * PER_PARTITION, 2 * PER_PARTITION)
        out, _ = run.communicate(timeout=120)
        assert run.returncode == 0, out.decode(errors="replace")
    finally:
        if run.poll() is None:
            run.kill()
    ids, _ = target_ids(ingest.addr)
    assert sorted(ids.tolist()) == list(range(0, 11 * PER_PARTITION, 2))


def test_following_a_source_with_no_partition_yet_waits_for_the_first(ingest: IngestProcess) -> None:
    add_records(ingest.addr, 0, 0, create=True)  # the dataset exists, empty
    run = subprocess.Popen(
        mlmesh("run", "--ingest-addr", ingest.addr, "--source", "raw", "--target", "cooked",
               "--transform", AFFINE, "--arg", "every=2", "--workers", "1", "--follow",
               "--poll-seconds", "0.2", "--until-idle", "3"),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        time.sleep(2.0)
        assert run.poll() is None, "the driver gave up on a source with nothing in it yet"
        add_records(ingest.addr, 0, 2 * PER_PARTITION)
        out, _ = run.communicate(timeout=120)
        assert run.returncode == 0, out.decode(errors="replace")
    finally:
        if run.poll() is None:
            run.kill()
    ids, _ = target_ids(ingest.addr)
    assert sorted(ids.tolist()) == list(range(0, 2 * PER_PARTITION, 2))


def test_a_transform_that_does_not_fit_the_source_fails_clearly(ingest: IngestProcess) -> None:
    add_records(ingest.addr, 0, PER_PARTITION, create=True)
    res = subprocess.run(
        mlmesh("run", "--ingest-addr", ingest.addr, "--source", "raw", "--target", "cooked",
               "--transform", AFFINE, "--arg", "columns=nope"),
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode != 0
    assert "affine: column 'nope' is not in the source" in res.stdout + res.stderr
    res = subprocess.run(
        mlmesh("run", "--ingest-addr", ingest.addr, "--source", "raw", "--target", "cooked",
               "--transform", "no.such.module:fn"),
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode != 0 and "cannot be imported" in res.stdout + res.stderr
