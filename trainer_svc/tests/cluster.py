"""A real mlmesh training cluster for integration and fault tests: ingest, two
parameter-server shards, the coordinator and two workers, each its own
process on loopback ports, with Fashion-MNIST and churn data loaded."""

from __future__ import annotations

import contextlib
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from mlmesh.channels import sync_channel
from mlmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from mlmesh.paramserver.v1 import paramserver_pb2, paramserver_pb2_grpc
from mlmesh.tensor import dtype_code, to_proto
from mlmesh.trainer.v1 import trainer_pb2, trainer_pb2_grpc

from trainer_svc.tests import procs

FASHION_TRAIN = "fashion-small-train"
FASHION_TEST = "fashion-small-test"
FASHION_SCHEMA = ingest_pb2.DatasetSchema(
    features=[
        ingest_pb2.FeatureSpec(name="image", dtype=dtype_code("uint8"), shape=[28, 28]),
        ingest_pb2.FeatureSpec(name="label", dtype=dtype_code("int64"), shape=[]),
    ]
)
TERMINAL = {trainer_pb2.JOB_STATE_SUCCEEDED, trainer_pb2.JOB_STATE_FAILED, trainer_pb2.JOB_STATE_CANCELLED}
WORKER_FLAGS = [
    "--lease-seconds",
    "6",
    "--report-every-seconds",
    "0.5",
    "--poll-seconds",
    "0.2",
    "--tf-threads",
    "1",
]


@dataclass
class Cluster:
    work: Path
    procs: list[procs.Proc] = field(default_factory=list)
    channels: list[grpc.Channel] = field(default_factory=list)
    ingest: procs.Proc | None = None
    shards: list[procs.Proc] = field(default_factory=list)
    coordinator: procs.Proc | None = None
    workers: dict[str, procs.Proc] = field(default_factory=dict)
    coordinator_flags: list[str] = field(default_factory=list)

    @property
    def repo(self) -> Path:
        return self.work / "repo"

    def channel(self, addr: str) -> grpc.Channel:
        ch = sync_channel(addr)
        self.channels.append(ch)
        return ch

    def trainer(self) -> trainer_pb2_grpc.TrainerServiceStub:
        assert self.coordinator is not None
        return trainer_pb2_grpc.TrainerServiceStub(self.channel(self.coordinator.addr))

    def ingest_stub(self) -> ingest_pb2_grpc.IngestServiceStub:
        assert self.ingest is not None
        return ingest_pb2_grpc.IngestServiceStub(self.channel(self.ingest.addr))

    def shard_stub(self, i: int) -> paramserver_pb2_grpc.ParameterServerServiceStub:
        return paramserver_pb2_grpc.ParameterServerServiceStub(self.channel(self.shards[i].addr))

    def start_coordinator(self, port: int = 0) -> procs.Proc:
        args = [
            "trainer_svc", "coordinator",
            "--ingest-addr", self.ingest.addr,  # type: ignore[union-attr]
            "--ps-addrs", ",".join(s.addr for s in self.shards),
            "--model-repo", str(self.repo),
            "--work-dir", str(self.work / "coordinator"),
            "--monitor-seconds", "0.2",
            *self.coordinator_flags,
        ]  # fmt: skip
        self.coordinator = self._start("coordinator", args, port=port)
        return self.coordinator

    def start_worker(self, worker_id: str, wait: bool = True) -> procs.Proc:
        args = [
            "trainer_svc", "worker",
            "--coordinator-addr", self.coordinator.addr,  # type: ignore[union-attr]
            "--worker-id", worker_id,
            "--cache-dir", str(self.work / f"cache-{worker_id}"),
            *WORKER_FLAGS,
        ]  # fmt: skip
        self.workers[worker_id] = self._start(worker_id, args, wait=wait)
        return self.workers[worker_id]

    def _start(self, name: str, args: list[str], wait: bool = True, port: int = 0) -> procs.Proc:
        proc = procs.start(name, args, self.work, wait=wait, port=port)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        """Workers first (they would log the coordinator's absence), then the rest;
        each group is signalled at once and then awaited."""
        for ch in self.channels:
            ch.close()
        workers = [p for p in self.procs if p.name.startswith("w")]
        for group in (workers, [p for p in self.procs if p not in workers]):
            for proc in group:
                with contextlib.suppress(Exception):
                    proc.terminate()
            for proc in group:
                with contextlib.suppress(Exception):
                    proc.stop()


def start_cluster(
    work: Path,
    shard_flags: Sequence[str] = (),
    coordinator_flags: Sequence[str] = (),
    workers: Sequence[str] = ("w0", "w1"),
) -> Cluster:
    c = Cluster(work, coordinator_flags=list(coordinator_flags))
    try:
        c.ingest = c._start("ingest", ["ingest_svc", "--data-dir", str(work / "ingest")])
        for i in range(2):
            c.shards.append(
                c._start(
                    f"shard{i}",
                    ["paramserver_svc", "--shard-index", str(i), "--num-shards", "2",
                     "--checkpoint-dir", str(work / f"shard{i}"), *shard_flags],
                )
            )  # fmt: skip
        c.start_coordinator()
        started = [c.start_worker(w, wait=False) for w in workers]
        for w in started:
            procs.wait_ready(w)
        return c
    except BaseException:
        c.stop()
        raise


def upload(stub: ingest_pb2_grpc.IngestServiceStub, name: str, table: dict[str, np.ndarray]) -> None:
    stub.CreateDataset(
        ingest_pb2.CreateDatasetRequest(name=name, schema=FASHION_SCHEMA, max_partition_bytes=256 * 1024),
        timeout=30,
    )
    n = len(table["label"])

    def requests() -> Any:
        for start in range(0, n, 1000):
            batch = {k: to_proto(v[start : start + 1000]) for k, v in table.items()}
            yield ingest_pb2.AppendRequest(dataset=name, batch=ingest_pb2.RecordBatch(features=batch))

    assert stub.Append(requests(), timeout=120).records_appended == n


def fashion_spec(epochs: int = 1, **overrides: Any) -> trainer_pb2.JobSpec:
    spec = trainer_pb2.JobSpec(
        model="mlmesh.models.fashion_cnn:build",
        train_dataset=FASHION_TRAIN,
        eval_dataset=FASHION_TEST,
        epochs=epochs,
        batch_size=16,  # 1 epoch of 3,000 records: ~190 steps, ~0.7 accuracy
        optimizer=paramserver_pb2.OptimizerSpec(kind="adam", learning_rate=1e-3),
        model_name="fashion-mnist",
        seed=1,
    )
    for key, value in overrides.items():
        setattr(spec, key, value)
    return spec


def wait_job(
    stub: trainer_pb2_grpc.TrainerServiceStub,
    job_id: str,
    states: set[int] = TERMINAL,
    timeout: float = 120.0,
) -> trainer_pb2.JobStatus:
    deadline = time.monotonic() + timeout
    while True:
        job = stub.GetJob(trainer_pb2.GetJobRequest(job_id=job_id), timeout=10).job
        if job.state in states:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"job {job_id} still {trainer_pb2.JobState.Name(job.state)} after {timeout}s: {job}"
            )
        time.sleep(0.2)


def wait_dropped(
    stub: paramserver_pb2_grpc.ParameterServerServiceStub, job_id: str, timeout: float = 30.0
) -> paramserver_pb2.GetShardInfoResponse:
    """Wait until the shard dropped the job (the coordinator releases a terminal job)."""
    deadline = time.monotonic() + timeout
    while True:
        info = stub.GetShardInfo(paramserver_pb2.GetShardInfoRequest(), timeout=10)
        if job_id in info.dropped_jobs:
            return info
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not dropped after {timeout}s: {list(info.dropped_jobs)}")
        time.sleep(0.1)


def finished_job_info(
    stub: paramserver_pb2_grpc.ParameterServerServiceStub, job_id: str
) -> paramserver_pb2.JobInfo:
    """A finished job's state on a shard: the coordinator released it (DropJob), so it is
    loaded back from its final checkpoint first."""
    wait_dropped(stub, job_id)
    stub.LoadCheckpoint(paramserver_pb2.LoadCheckpointRequest(job_id=job_id), timeout=60)
    info = stub.GetShardInfo(paramserver_pb2.GetShardInfoRequest(), timeout=10)
    return next(j for j in info.jobs if j.job_id == job_id)


def metric(proc: procs.Proc, sample: str) -> float:
    """One sample of a process's Prometheus metrics, named as exposed
    ('name' or 'name{label="value"}'); 0 if absent."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{proc.info['metrics_port']}/metrics", timeout=5).read()
    for line in text.decode().splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
