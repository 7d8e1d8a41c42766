"""Faults during a job: a worker killed mid-task, the coordinator killed and
restarted. The job still completes every task and succeeds."""

from __future__ import annotations

import itertools
import signal
import time

import pytest
from mlmesh.paramserver.v1 import paramserver_pb2
from mlmesh.trainer.v1 import trainer_pb2

from trainer_svc.tests.cluster import Cluster, fashion_spec, finished_job_info, metric, wait_job
from trainer_svc.tests.procs import Proc

pytestmark = pytest.mark.faults

RUNNING_OR_LATER = {trainer_pb2.JOB_STATE_RUNNING, *range(3, 8)}


def wait_steps(c: Cluster, job_id: str, steps: int, tasks: int = 0) -> trainer_pb2.JobStatus:
    """Wait until the job has trained `steps` steps and completed `tasks` tasks (or left
    RUNNING); bounded at 60 s. Steps alone do not say a task completed: a worker reports a
    finished lease with its next LeaseTask, so completions trail the steps."""
    trainer = c.trainer()
    for _ in range(600):
        job = wait_job(trainer, job_id, RUNNING_OR_LATER)
        if job.state != trainer_pb2.JOB_STATE_RUNNING:
            return job
        if job.steps >= steps and job.tasks_completed >= tasks:
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} did not reach {steps} steps and {tasks} completed tasks")


def wait_metric(proc: Proc, name: str, at_least: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while metric(proc, name) < at_least:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.name}: {name} stayed below {at_least} for {timeout:.0f} s")
        time.sleep(0.2)


def test_worker_killed_mid_task_is_replaced_and_the_job_completes(cluster: Cluster) -> None:
    trainer = cluster.trainer()
    trainer.CreateJob(
        trainer_pb2.CreateJobRequest(
            spec=fashion_spec(epochs=5, model_name="fashion-fault-w", batch_size=32), job_id="fault-w"
        ),
        timeout=120,
    )
    job = wait_steps(cluster, "fault-w", 40)
    assert job.state == trainer_pb2.JOB_STATE_RUNNING
    # w0 stalls (SIGSTOP, as in a long GC pause or a frozen VM) while w1 dies
    # (SIGKILL: its leases are abandoned, not completed). Without the stall w0
    # finishes the job before a replacement has imported TensorFlow.
    survivor = cluster.workers["w0"]
    survivor.popen.send_signal(signal.SIGSTOP)
    try:
        cluster.workers["w1"].kill()
        # The same identity comes back: its pushes must still be applied
        # although its earlier incarnation pushed higher step counts.
        replacement = cluster.start_worker("w1")
        wait_metric(replacement, 'mlmesh_trainer_worker_tasks_total{outcome="completed"}', 1, timeout=90)
    finally:
        survivor.popen.send_signal(signal.SIGCONT)
    # w0's leases lapsed while it was stopped: its completions are refused and
    # those partitions are trained again, so the job still completes each task once.
    job = wait_job(trainer, "fault-w", timeout=150)
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.tasks_completed == job.tasks_total == 50
    assert job.eval_metrics["accuracy"] > 0.5
    assert metric(replacement, 'mlmesh_trainer_worker_tasks_total{outcome="completed"}') > 0
    assert metric(replacement, "mlmesh_trainer_worker_pushes_ignored_total") == 0


def test_coordinator_restart_resumes_the_running_job(cluster: Cluster) -> None:
    trainer = cluster.trainer()
    trainer.CreateJob(
        trainer_pb2.CreateJobRequest(
            spec=fashion_spec(epochs=2, model_name="fashion-fault-c", batch_size=32), job_id="fault-c"
        ),
        timeout=120,
    )
    before = wait_steps(cluster, "fault-c", 20)
    assert before.state == trainer_pb2.JOB_STATE_RUNNING
    assert cluster.coordinator is not None
    port = cluster.coordinator.info["port"]
    cluster.coordinator.kill()
    cluster.start_coordinator(port=port)  # same address: the workers keep it
    trainer = cluster.trainer()
    again = trainer.GetJob(trainer_pb2.GetJobRequest(job_id="fault-c"), timeout=10).job
    assert again.state == trainer_pb2.JOB_STATE_RUNNING and again.created_unix == before.created_unix
    job = wait_job(trainer, "fault-c", timeout=150)
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.tasks_completed == job.tasks_total == 20
    assert job.started_unix == before.started_unix
    assert job.eval_metrics["accuracy"] > 0.5


def shard_job(c: Cluster, shard: int, job_id: str) -> paramserver_pb2.JobInfo:
    info = c.shard_stub(shard).GetShardInfo(paramserver_pb2.GetShardInfoRequest(), timeout=10)
    return next(j for j in info.jobs if j.job_id == job_id)


@pytest.mark.parametrize("consistency", ["async", "sync", "bounded:1"])
def test_a_worker_joins_mid_job_and_dies_and_the_job_completes(cluster: Cluster, consistency: str) -> None:
    """Elastic membership: a third worker joins a running job, then is killed with SIGKILL;
    the barrier (SYNC) or the staleness bound (BOUNDED) lets the others go on once its
    lease expires, and the job completes."""
    job_id = f"elastic-{consistency.replace(':', '-')}"
    worker_id = f"w-extra-{job_id}"
    trainer = cluster.trainer()
    # Long enough for a new worker to start (import TensorFlow) while it runs; ASYNC runs fastest.
    epochs = 16 if consistency == "async" else 12
    spec = fashion_spec(epochs=epochs, model_name=job_id, batch_size=32, consistency=consistency)
    spec.worker_lease_seconds = 3.0
    trainer.CreateJob(trainer_pb2.CreateJobRequest(spec=spec, job_id=job_id), timeout=120)
    wait_steps(cluster, job_id, 10)
    joined_before = metric(cluster.shards[0], 'mlmesh_ps_membership_total{event="joined"}')
    extra = cluster.start_worker(worker_id)
    while worker_id not in shard_job(cluster, 0, job_id).workers:
        job = trainer.GetJob(trainer_pb2.GetJobRequest(job_id=job_id), timeout=10).job
        assert job.state == trainer_pb2.JOB_STATE_RUNNING, "the job ended before the new worker joined"
        time.sleep(0.1)
    assert metric(cluster.shards[0], 'mlmesh_ps_membership_total{event="joined"}') > joined_before
    while metric(extra, "mlmesh_trainer_worker_steps_total") < 5:  # it trains alongside the others
        job = trainer.GetJob(trainer_pb2.GetJobRequest(job_id=job_id), timeout=10).job
        assert job.state == trainer_pb2.JOB_STATE_RUNNING, "the job ended before the new worker trained"
        time.sleep(0.1)
    extra.kill()
    del cluster.workers[worker_id]  # the session's other tests read every listed worker's metrics
    job = wait_job(trainer, job_id, timeout=240)
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.tasks_completed == job.tasks_total == 10 * epochs
    info = finished_job_info(cluster.shard_stub(0), job_id)
    assert paramserver_pb2.ConsistencyMode.Name(info.config.consistency) == (
        "CONSISTENCY_" + consistency.split(":")[0].upper()
    )
    if consistency == "sync":
        # One aggregated update per step: far fewer updates than the pushes the workers made.
        assert 0 < info.version <= info.clock < job.steps
    assert job.eval_metrics["accuracy"] > 0.5


def test_ingest_killed_mid_epoch_loses_no_partition_and_workers_reconnect(cluster: Cluster) -> None:
    """kill -9 of ingest_svc mid-epoch, restarted on the same port and data dir: the queue and
    the live leases survive (SQLite WAL, synchronous=FULL), the workers retry until it is back,
    every task completes once, and no task was ever under two live leases at a time."""
    import sqlite3

    trainer = cluster.trainer()
    trainer.CreateJob(
        trainer_pb2.CreateJobRequest(
            spec=fashion_spec(epochs=4, model_name="fashion-fault-i", batch_size=32), job_id="fault-i"
        ),
        timeout=120,
    )
    before = wait_steps(cluster, "fault-i", 30, tasks=1)
    assert before.state == trainer_pb2.JOB_STATE_RUNNING and 0 < before.tasks_completed < before.tasks_total
    assert cluster.ingest is not None
    port = cluster.ingest.info["port"]
    cluster.ingest.kill()
    time.sleep(1.0)  # the workers and the coordinator see it gone and back off
    cluster.procs.remove(cluster.ingest)
    cluster.ingest = cluster._start(
        "ingest", ["ingest_svc", "--data-dir", str(cluster.work / "ingest")], port=port
    )
    job = wait_job(trainer, "fault-i", timeout=180)
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.tasks_completed == job.tasks_total == 40
    assert job.eval_metrics["accuracy"] > 0.5

    db = sqlite3.connect(f"file:{cluster.work / 'ingest' / 'meta.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT epoch, partition_id, leased_unix, coalesce(ended_unix, deadline_unix), state FROM leases "
            "WHERE job_id = 'fault-i' ORDER BY epoch, partition_id, leased_unix"
        ).fetchall()
        won = db.execute(
            "SELECT count(*) FROM leases WHERE job_id = 'fault-i' AND state = 'completed'"
        ).fetchone()[0]
    finally:
        db.close()
    assert won == 40  # exactly one lease completed each task
    by_task: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for epoch, pid, start, end, _ in rows:
        by_task.setdefault((epoch, pid), []).append((start, end))
    assert len(by_task) == 40
    for spans in by_task.values():  # a task's leases never overlap in time
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end


def test_exactly_once_a_worker_killed_mid_partition_leaves_every_partition_applied_once(
    cluster: Cluster,
) -> None:
    """An exactly-once job; a worker is killed (SIGKILL) in the middle of a partition. Its
    staged pushes are aborted once its lease expires, another worker trains the partition
    again, and by the shards' own count every task of every epoch had its gradients
    applied once: as many pushes as the partition has batches, on every shard."""
    trainer = cluster.trainer()
    epochs, batch = 3, 32
    spec = fashion_spec(epochs=epochs, model_name="fashion-once", batch_size=batch, exactly_once=True)
    trainer.CreateJob(trainer_pb2.CreateJobRequest(spec=spec, job_id="once"), timeout=120)
    wait_steps(cluster, "once", 15)
    victim = cluster.workers["w1"]
    staged: list[str] = []
    for _ in range(1200):  # until w1 is early in a partition (of 10 batches): some pushes staged
        info = shard_job(cluster, 0, "once")
        staged = [st.lease_id for st in info.staged if st.worker_id == "w1" and 1 <= st.pushes <= 3]
        if staged:
            break
        time.sleep(0.05)
    assert staged, "w1 never had pushes staged"
    victim.kill()  # its staged pushes wait under a lease nobody will complete
    cluster.start_worker("w1")
    job = wait_job(trainer, "once", timeout=240)
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.tasks_completed == job.tasks_total == 10 * epochs
    assert job.eval_metrics["accuracy"] > 0.4

    from mlmesh.ingest.v1 import ingest_pb2

    parts = cluster.ingest_stub().ListPartitions(
        ingest_pb2.ListPartitionsRequest(dataset="fashion-small-train")
    )
    batches = {p.partition_id: -(-p.num_records // batch) for p in parts.partitions}
    want = {f"once/e{e}/p{p}": n for e in range(epochs) for p, n in batches.items()}
    aborted = 0
    for s in range(2):
        info = finished_job_info(cluster.shard_stub(s), "once")
        assert dict(info.applied_pushes_by_task) == want  # each task once, all of its batches
        assert not info.staged
        aborted += info.leases_aborted
    state = cluster.ingest_stub().GetLease(ingest_pb2.GetLeaseRequest(lease_id=staged[0]), timeout=10).state
    assert state == ingest_pb2.LEASE_STATE_EXPIRED  # its task went to another worker ...
    assert aborted >= 1  # ... and its partial partition was thrown away, not applied
