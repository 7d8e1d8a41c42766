"""`python -m ingest_svc` as a real process: lifecycle, kill -9 and restart, throughput."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mlmesh.channels import sync_channel
from mlmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc

from ingest_svc.tests.conftest import append_requests, create_mnist, mnist_like, read_all
from ingest_svc.tests.process import REPO, IngestProcess


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., IngestProcess]]:
    """Start ingest processes on one data dir; every one is killed at teardown."""
    started: list[IngestProcess] = []

    def _start(*extra: str) -> IngestProcess:
        proc = IngestProcess(tmp_path / "data", tmp_path / "run", *extra)
        started.append(proc)
        return proc.start()

    try:
        yield _start
    finally:
        for proc in started:
            proc.close()


def connect(proc: IngestProcess) -> tuple[grpc.Channel, ingest_pb2_grpc.IngestServiceStub]:
    channel = sync_channel(proc.addr)
    return channel, ingest_pb2_grpc.IngestServiceStub(channel)


@pytest.mark.faults
def test_kill9_and_restart_loses_nothing_committed(start) -> None:
    proc = start()
    channel, stub = connect(proc)
    create_mnist(stub, "ds", max_partition_bytes=8192)  # 10 records per partition
    data = mnist_like(45)
    parts = stub.Append(append_requests("ds", data, per_message=7), timeout=30).partitions
    assert len(parts) == 5
    stub.EnqueueEpoch(ingest_pb2.EnqueueEpochRequest(job_id="j", dataset="ds", epoch=0), timeout=30)
    done = stub.LeaseTask(ingest_pb2.LeaseTaskRequest(job_id="j", worker_id="w0"), timeout=30).tasks[0]
    stub.CompleteTask(ingest_pb2.CompleteTaskRequest(lease_id=done.lease_id), timeout=30)
    held = stub.LeaseTask(
        ingest_pb2.LeaseTaskRequest(job_id="j", worker_id="w1", lease_seconds=600), timeout=30
    ).tasks[0]
    channel.close()
    proc.kill9()

    proc = start()
    channel, stub = connect(proc)
    try:
        d = stub.GetDataset(ingest_pb2.GetDatasetRequest(name="ds"), timeout=30).dataset
        assert (d.num_records, d.num_partitions) == (45, 5)
        listed = stub.ListPartitions(ingest_pb2.ListPartitionsRequest(dataset="ds"), timeout=30).partitions
        assert list(listed) == list(parts)
        labels = np.concatenate([read_all(stub, "ds", p.partition_id)[0]["label"] for p in parts])
        np.testing.assert_array_equal(labels, data["label"])
        s = stub.GetQueueStatus(ingest_pb2.GetQueueStatusRequest(job_id="j"), timeout=30).status
        assert (s.pending, s.leased, s.completed, s.total) == (3, 1, 1, 5)
        # The lease held across the crash is still valid; the completed one stays completed.
        for lease_id in (held.lease_id, done.lease_id):
            s = stub.CompleteTask(ingest_pb2.CompleteTaskRequest(lease_id=lease_id), timeout=30).status
            assert s.completed == 2
        nxt = stub.LeaseTask(ingest_pb2.LeaseTaskRequest(job_id="j", worker_id="w2"), timeout=30).tasks[0]
        assert nxt.partition_id == 2
        # New appends continue the partition ids.
        more = stub.Append(append_requests("ds", mnist_like(3, start=45), per_message=3), timeout=30)
        assert [p.partition_id for p in more.partitions] == [5]
    finally:
        channel.close()


@pytest.mark.faults
def test_kill9_mid_append_leaves_no_trace_after_restart(start, tmp_path: Path) -> None:
    proc = start()
    channel, stub = connect(proc)
    create_mnist(stub, "ds", max_partition_bytes=4096)
    stub.Append(append_requests("ds", mnist_like(5), per_message=5), timeout=30)  # one committed partition
    release = threading.Event()

    def requests():
        yield from append_requests("ds", mnist_like(40, start=5), per_message=5)
        release.wait(20)

    future = stub.Append.future(requests(), timeout=30)
    ds_dir = tmp_path / "data" / "datasets" / "ds"
    try:
        deadline = time.monotonic() + 20
        while sum(p.name.startswith(".tmp-") for p in ds_dir.iterdir()) < 8:
            assert time.monotonic() < deadline, "the stream never staged its partitions"
            time.sleep(0.02)
        proc.kill9()
    finally:
        release.set()
    assert future.exception(timeout=20) is not None
    channel.close()
    assert any(p.name.startswith(".tmp-") for p in ds_dir.iterdir())

    proc = start()
    channel, stub = connect(proc)
    try:
        assert sorted(p.name for p in ds_dir.iterdir()) == ["part-00000000.bin"]
        d = stub.GetDataset(ingest_pb2.GetDatasetRequest(name="ds"), timeout=30).dataset
        assert (d.num_records, d.num_partitions) == (5, 1)
        assert '"temp_files": 8' in proc.log()
    finally:
        channel.close()


def metrics_text(proc: IngestProcess) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.metrics_port}/metrics", timeout=10) as r:
        return r.read().decode()


@pytest.mark.integration
def test_serves_health_and_metrics_and_stops_cleanly_on_sigterm(start) -> None:
    proc = start("--lease-sweep-seconds", "0.1")
    channel, stub = connect(proc)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ["", "mlmesh.ingest.v1.IngestService"]:
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        create_mnist(stub, "ds")
        stub.Append(append_requests("ds", mnist_like(10), per_message=10), timeout=30)
        stub.EnqueueEpoch(ingest_pb2.EnqueueEpochRequest(job_id="j", dataset="ds", epoch=0), timeout=30)
        text = metrics_text(proc)
        assert "mlmesh_ingest_records_appended_total 10.0" in text
        assert "mlmesh_ingest_partitions_written_total 1.0" in text
        assert "mlmesh_ingest_queue_pending_tasks 1.0" in text
        stub.LeaseTask(ingest_pb2.LeaseTaskRequest(job_id="j", worker_id="w", lease_seconds=0.2), timeout=30)
        assert "mlmesh_ingest_queue_leased_tasks 1.0" in metrics_text(proc)
        # No further queue call: the background sweep alone expires the lease.
        deadline = time.monotonic() + 10
        while "mlmesh_ingest_leases_expired_total 1.0" not in (text := metrics_text(proc)):
            assert time.monotonic() < deadline, "the sweep never expired the lease"
            time.sleep(0.05)
        assert "mlmesh_ingest_queue_pending_tasks 1.0" in text
    finally:
        channel.close()
    assert proc.terminate() == 0
    assert not proc.port_file.exists()


@pytest.mark.integration
def test_invalid_setting_exits_2_naming_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ingest_svc",
            "--data-dir",
            str(tmp_path),
            "--default-max-partition-bytes",
            "10",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "default_max_partition_bytes" in result.stderr
    assert "MLMESH_INGEST_DEFAULT_MAX_PARTITION_BYTES" in result.stderr


@pytest.mark.integration
def test_fashion_mnist_sized_append_and_read_back_are_fast(start, capsys) -> None:
    proc = start()
    channel, stub = connect(proc)
    try:
        create_mnist(stub, "fashion-mnist-train")
        data = mnist_like(60_000)
        requests = list(append_requests("fashion-mnist-train", data, per_message=1300))  # ~1 MiB each
        t0 = time.perf_counter()
        resp = stub.Append(iter(requests), timeout=60)
        append_s = time.perf_counter() - t0
        assert resp.records_appended == 60_000
        t0 = time.perf_counter()
        n = 0
        for p in resp.partitions:
            for msg in stub.ReadPartition(
                ingest_pb2.ReadPartitionRequest(dataset="fashion-mnist-train", partition_id=p.partition_id),
                timeout=60,
            ):
                n += msg.batch.features["label"].shape[0]
        read_s = time.perf_counter() - t0
        assert n == 60_000
        mb = 60_000 * (784 + 8) / 1e6
        with capsys.disabled():
            print(
                f"\n[ingest perf] append 60k records ({mb:.1f} MB, {len(resp.partitions)} partitions): "
                f"{append_s:.2f}s ({mb / append_s:.0f} MB/s); "
                f"read back: {read_s:.2f}s ({mb / read_s:.0f} MB/s)"
            )
        # Generous bounds for 2 shared cores; the brief asks for "a few seconds at most".
        assert append_s < 10 and read_s < 10
    finally:
        channel.close()


@pytest.mark.integration
def test_second_process_on_the_same_data_dir_exits_1(start, tmp_path: Path) -> None:
    first = start()
    result = subprocess.run(
        [sys.executable, "-m", "ingest_svc", "--data-dir", str(tmp_path / "data"), "--metrics-port=-1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"in use by another ingest process (pid {first.proc.pid})" in result.stderr
