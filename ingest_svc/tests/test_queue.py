"""The task queue: EnqueueEpoch, LeaseTask, ExtendLease, CompleteTask, GetQueueStatus."""

from __future__ import annotations

import time

import grpc
import pytest
from mlmesh.ingest.v1 import ingest_pb2

from ingest_svc.tests.conftest import MNIST_RECORD_BYTES, append_requests, create_mnist, mnist_like, rpc_error

pytestmark = pytest.mark.unit

SHORT = 0.3  # seconds; leases meant to expire within a test


@pytest.fixture
def ds(stub) -> str:
    """Dataset 'ds' with 8 partitions (ids 0..7) of 5 records."""
    create_mnist(stub, "ds", max_partition_bytes=4096)
    per = 4096 // MNIST_RECORD_BYTES
    stub.Append(append_requests("ds", mnist_like(8 * per), per_message=per), timeout=30)
    return "ds"


def enqueue(
    stub, job: str = "job", epoch: int = 0, dataset: str = "ds", shuffle: bool = False, seed: int = 0
):
    return stub.EnqueueEpoch(
        ingest_pb2.EnqueueEpochRequest(job_id=job, dataset=dataset, epoch=epoch, shuffle=shuffle, seed=seed),
        timeout=30,
    )


def lease(stub, job: str = "job", worker: str = "w0", seconds: float = 0) -> ingest_pb2.LeaseTaskResponse:
    return stub.LeaseTask(
        ingest_pb2.LeaseTaskRequest(job_id=job, worker_id=worker, lease_seconds=seconds), timeout=30
    )


def complete(stub, lease_id: str) -> ingest_pb2.CompleteTaskResponse:
    return stub.CompleteTask(ingest_pb2.CompleteTaskRequest(lease_id=lease_id), timeout=30)


def drain_order(stub, job: str) -> list[tuple[int, int]]:
    out = []
    for _ in range(100):
        resp = lease(stub, job)
        if not resp.tasks:
            return out
        out.append((resp.tasks[0].epoch, resp.tasks[0].partition_id))
        complete(stub, resp.tasks[0].lease_id)
    raise AssertionError("queue did not drain in 100 leases")


# -- EnqueueEpoch ---------------------------------------------------------------------


def test_enqueue_creates_one_pending_task_per_partition(stub, ds) -> None:
    resp = enqueue(stub)
    assert resp.tasks_enqueued == 8
    s = resp.status
    assert (s.job_id, s.pending, s.leased, s.completed, s.total, s.done) == ("job", 8, 0, 0, 8, False)


def test_enqueue_is_idempotent_per_job_and_epoch(stub, ds) -> None:
    enqueue(stub, shuffle=True, seed=7)
    again = enqueue(stub, shuffle=True, seed=7)
    assert again.tasks_enqueued == 0 and again.status.total == 8
    assert enqueue(stub, epoch=1).tasks_enqueued == 8
    assert enqueue(stub, job="other").tasks_enqueued == 8


@pytest.mark.parametrize("change", [{"shuffle": False}, {"seed": 7}, {"dataset": "ds2"}])
def test_enqueue_repeat_with_other_arguments_is_already_exists(stub, ds, change) -> None:
    create_mnist(stub, "ds2")
    stub.Append(append_requests("ds2", mnist_like(1), per_message=1), timeout=30)
    enqueue(stub, shuffle=True, seed=1)
    args = {"shuffle": True, "seed": 1, **change}
    err = rpc_error(
        stub.EnqueueEpoch, ingest_pb2.EnqueueEpochRequest(job_id="job", epoch=0, **{"dataset": "ds", **args})
    )
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "epoch 0 of job 'job' was already enqueued" in err.details()


def test_enqueue_unknown_dataset_is_not_found(stub) -> None:
    err = rpc_error(stub.EnqueueEpoch, ingest_pb2.EnqueueEpochRequest(job_id="j", dataset="nope", epoch=0))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "'nope' not found" in err.details()


def test_enqueue_dataset_without_partitions_is_failed_precondition(stub) -> None:
    create_mnist(stub, "empty")
    err = rpc_error(stub.EnqueueEpoch, ingest_pb2.EnqueueEpochRequest(job_id="j", dataset="empty", epoch=0))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'empty' has no partitions" in err.details()


def test_enqueue_negative_epoch_is_invalid_argument(stub, ds) -> None:
    err = rpc_error(stub.EnqueueEpoch, ingest_pb2.EnqueueEpochRequest(job_id="j", dataset="ds", epoch=-1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "epoch is -1" in err.details()


@pytest.mark.parametrize(
    ("job", "expect"), [("", "job_id is empty"), ("a\nb", "printable"), ("x" * 257, "1-256")]
)
def test_enqueue_invalid_job_id_is_invalid_argument(stub, ds, job: str, expect: str) -> None:
    err = rpc_error(stub.EnqueueEpoch, ingest_pb2.EnqueueEpochRequest(job_id=job, dataset="ds", epoch=0))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expect in err.details()


def test_enqueue_invalid_dataset_name_is_invalid_argument(stub) -> None:
    err = rpc_error(stub.EnqueueEpoch, ingest_pb2.EnqueueEpochRequest(job_id="j", dataset="", epoch=0))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- LeaseTask ordering ---------------------------------------------------------------


def test_unshuffled_epoch_is_leased_in_partition_order(stub, ds) -> None:
    enqueue(stub)
    assert drain_order(stub, "job") == [(0, p) for p in range(8)]


def test_lowest_epoch_is_leased_first(stub, ds) -> None:
    enqueue(stub, epoch=2)
    enqueue(stub, epoch=0)
    enqueue(stub, epoch=1)
    epochs = [e for e, _ in drain_order(stub, "job")]
    assert epochs == [0] * 8 + [1] * 8 + [2] * 8


def test_shuffle_is_a_permutation_determined_by_the_seed(stub, ds) -> None:
    enqueue(stub, job="a", shuffle=True, seed=42)
    enqueue(stub, job="b", shuffle=True, seed=42)
    enqueue(stub, job="c", shuffle=True, seed=43)
    a, b, c = (drain_order(stub, j) for j in "abc")
    assert a == b
    assert sorted(a) == [(0, p) for p in range(8)]
    assert a != [(0, p) for p in range(8)] and a != c


def test_negative_seed_is_accepted(stub, ds) -> None:
    enqueue(stub, shuffle=True, seed=-5)
    assert sorted(drain_order(stub, "job")) == [(0, p) for p in range(8)]


def test_lease_returns_the_task_with_a_deadline_and_counts_it_leased(stub, ds) -> None:
    enqueue(stub)
    before = time.time()
    resp = lease(stub, seconds=12.5)
    t = resp.tasks[0]
    assert (t.job_id, t.dataset, t.partition_id, t.epoch, t.num_records, t.attempt) == (
        "job",
        "ds",
        0,
        0,
        5,
        0,
    )
    assert t.task_id == "job/e0/p0"
    assert len(t.lease_id) == 32 and int(t.lease_id, 16) >= 0
    assert before + 12.5 <= t.lease_deadline_unix <= time.time() + 12.5
    assert (resp.status.pending, resp.status.leased) == (7, 1)


def test_lease_zero_seconds_takes_the_server_default(stub, ds) -> None:
    enqueue(stub)
    t = lease(stub).tasks[0]
    assert abs(t.lease_deadline_unix - (time.time() + 30)) < 5


def test_lease_ids_are_unique(stub, ds) -> None:
    enqueue(stub)
    ids = {lease(stub).tasks[0].lease_id for _ in range(8)}
    assert len(ids) == 8


def test_no_pending_task_returns_no_task_with_status(stub, ds) -> None:
    enqueue(stub)
    held = [lease(stub).tasks[0] for _ in range(8)]
    resp = lease(stub)
    assert not resp.tasks
    assert (resp.status.pending, resp.status.leased, resp.status.done) == (0, 8, False)
    for t in held:
        complete(stub, t.lease_id)
    resp = lease(stub)
    assert not resp.tasks
    assert (resp.status.completed, resp.status.total, resp.status.done) == (8, 8, True)


def test_lease_for_unknown_job_is_not_found(stub, ds) -> None:
    err = rpc_error(stub.LeaseTask, ingest_pb2.LeaseTaskRequest(job_id="never", worker_id="w"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "job 'never' not found" in err.details()


@pytest.mark.parametrize(
    ("job", "worker", "seconds", "expect"),
    [
        ("", "w", 0, "job_id is empty"),
        ("job", "", 0, "worker_id is empty"),
        ("job", "w", -1, "lease_seconds is -1"),
        ("job", "w", 3601, "lease_seconds is 3601"),
        ("job", "w", float("nan"), "lease_seconds is nan"),
        ("job", "w", float("inf"), "lease_seconds is inf"),
    ],
)
def test_lease_bad_input_is_invalid_argument(stub, ds, job, worker, seconds, expect) -> None:
    enqueue(stub)
    err = rpc_error(
        stub.LeaseTask, ingest_pb2.LeaseTaskRequest(job_id=job, worker_id=worker, lease_seconds=seconds)
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expect in err.details()


# -- expiry ---------------------------------------------------------------------------


def test_expired_lease_returns_its_task_to_pending_with_next_attempt(stub, ds) -> None:
    enqueue(stub)
    first = lease(stub, seconds=SHORT).tasks[0]
    time.sleep(SHORT + 0.1)
    status = stub.GetQueueStatus(ingest_pb2.GetQueueStatusRequest(job_id="job"), timeout=30).status
    assert (status.pending, status.leased) == (8, 0)
    again = lease(stub, worker="w1").tasks[0]
    assert (again.partition_id, again.attempt) == (first.partition_id, 1)
    assert again.lease_id != first.lease_id


def test_complete_after_expiry_is_failed_precondition_naming_when(stub, ds) -> None:
    enqueue(stub)
    t = lease(stub, seconds=SHORT).tasks[0]
    time.sleep(SHORT + 0.1)
    err = rpc_error(stub.CompleteTask, ingest_pb2.CompleteTaskRequest(lease_id=t.lease_id))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "expired at 20" in err.details() and "s ago" in err.details() and "job/e0/p0" in err.details()
    # ... and stays so after the task was leased to someone else.
    lease(stub, worker="w1")
    err = rpc_error(stub.CompleteTask, ingest_pb2.CompleteTaskRequest(lease_id=t.lease_id))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_extend_keeps_a_lease_alive(stub, ds) -> None:
    enqueue(stub)
    t = lease(stub, seconds=SHORT).tasks[0]
    deadline = stub.ExtendLease(
        ingest_pb2.ExtendLeaseRequest(lease_id=t.lease_id, lease_seconds=20), timeout=30
    )
    assert deadline.lease_deadline_unix > t.lease_deadline_unix + 10
    time.sleep(SHORT + 0.1)
    assert complete(stub, t.lease_id).status.completed == 1


def test_extend_zero_seconds_takes_the_server_default(stub, ds) -> None:
    enqueue(stub)
    t = lease(stub, seconds=1).tasks[0]
    resp = stub.ExtendLease(ingest_pb2.ExtendLeaseRequest(lease_id=t.lease_id), timeout=30)
    assert abs(resp.lease_deadline_unix - (time.time() + 30)) < 5


def test_extend_expired_lease_is_failed_precondition(stub, ds) -> None:
    enqueue(stub)
    t = lease(stub, seconds=SHORT).tasks[0]
    time.sleep(SHORT + 0.1)
    err = rpc_error(stub.ExtendLease, ingest_pb2.ExtendLeaseRequest(lease_id=t.lease_id, lease_seconds=5))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "expired at" in err.details()


def test_extend_completed_lease_is_failed_precondition(stub, ds) -> None:
    enqueue(stub)
    t = lease(stub).tasks[0]
    complete(stub, t.lease_id)
    err = rpc_error(stub.ExtendLease, ingest_pb2.ExtendLeaseRequest(lease_id=t.lease_id, lease_seconds=5))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "completed" in err.details()


def test_extend_unknown_lease_is_not_found(stub, ds) -> None:
    err = rpc_error(stub.ExtendLease, ingest_pb2.ExtendLeaseRequest(lease_id="0" * 32, lease_seconds=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(("lease_id", "seconds"), [("", 5), ("x", -1), ("x", 1e9), ("x", float("nan"))])
def test_extend_bad_input_is_invalid_argument(stub, ds, lease_id, seconds) -> None:
    err = rpc_error(stub.ExtendLease, ingest_pb2.ExtendLeaseRequest(lease_id=lease_id, lease_seconds=seconds))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- CompleteTask / GetQueueStatus -----------------------------------------------------


def test_complete_marks_the_task_completed(stub, ds) -> None:
    enqueue(stub)
    t = lease(stub).tasks[0]
    s = complete(stub, t.lease_id).status
    assert (s.pending, s.leased, s.completed, s.total, s.done) == (7, 0, 1, 8, False)


def test_complete_twice_is_ok_and_counts_once(stub, ds) -> None:
    enqueue(stub)
    t = lease(stub).tasks[0]
    complete(stub, t.lease_id)
    s = complete(stub, t.lease_id).status
    assert (s.completed, s.pending) == (1, 7)


def test_complete_unknown_lease_is_not_found(stub, ds) -> None:
    err = rpc_error(stub.CompleteTask, ingest_pb2.CompleteTaskRequest(lease_id="f" * 32))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "not found" in err.details()


def test_complete_empty_lease_id_is_invalid_argument(stub) -> None:
    err = rpc_error(stub.CompleteTask, ingest_pb2.CompleteTaskRequest(lease_id=""))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_status_counts_across_epochs(stub, ds) -> None:
    enqueue(stub, epoch=0)
    enqueue(stub, epoch=1)
    complete(stub, lease(stub).tasks[0].lease_id)
    lease(stub)
    s = stub.GetQueueStatus(ingest_pb2.GetQueueStatusRequest(job_id="job"), timeout=30).status
    assert (s.job_id, s.pending, s.leased, s.completed, s.total, s.done) == ("job", 14, 1, 1, 16, False)


def test_status_of_unknown_job_is_not_found(stub) -> None:
    err = rpc_error(stub.GetQueueStatus, ingest_pb2.GetQueueStatusRequest(job_id="never"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_status_with_empty_job_id_is_invalid_argument(stub) -> None:
    err = rpc_error(stub.GetQueueStatus, ingest_pb2.GetQueueStatusRequest(job_id=""))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- batched leases, windows, per-epoch progress, winners -------------------------------------


def test_one_lease_call_grants_up_to_max_tasks_in_queue_order(stub, ds) -> None:
    enqueue(stub)
    resp = stub.LeaseTask(ingest_pb2.LeaseTaskRequest(job_id="job", worker_id="w0", max_tasks=3), timeout=30)
    assert [t.partition_id for t in resp.tasks] == [0, 1, 2]
    assert len({t.lease_id for t in resp.tasks}) == 3
    assert (resp.status.pending, resp.status.leased) == (5, 3)
    resp = stub.LeaseTask(ingest_pb2.LeaseTaskRequest(job_id="job", worker_id="w0", max_tasks=64), timeout=30)
    assert [t.partition_id for t in resp.tasks] == [3, 4, 5, 6, 7]


@pytest.mark.parametrize("max_tasks", [-1, 65])
def test_max_tasks_out_of_range_is_invalid_argument(stub, ds, max_tasks: int) -> None:
    enqueue(stub)
    err = rpc_error(
        stub.LeaseTask, ingest_pb2.LeaseTaskRequest(job_id="job", worker_id="w0", max_tasks=max_tasks)
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"max_tasks is {max_tasks}" in err.details()


def test_an_epoch_since_a_time_takes_only_the_partitions_that_arrived_since(stub, ds) -> None:
    cut = time.time()
    stub.Append(append_requests("ds", mnist_like(5), per_message=5), timeout=30)  # partition 8
    resp = stub.EnqueueEpoch(
        ingest_pb2.EnqueueEpochRequest(job_id="win", dataset="ds", epoch=0, since_unix=cut), timeout=30
    )
    assert resp.tasks_enqueued == 1
    assert drain_order(stub, "win") == [(0, 8)]
    err = rpc_error(
        stub.EnqueueEpoch,
        ingest_pb2.EnqueueEpochRequest(job_id="win2", dataset="ds", epoch=0, since_unix=time.time() + 60),
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no partitions that arrived since" in err.details()
    err = rpc_error(
        stub.EnqueueEpoch, ingest_pb2.EnqueueEpochRequest(job_id="win3", dataset="ds", epoch=0, since_unix=-1)
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_status_counts_each_epoch_apart(stub, ds) -> None:
    enqueue(stub, epoch=0)
    enqueue(stub, epoch=1)
    t = lease(stub).tasks[0]
    complete(stub, t.lease_id)
    lease(stub)
    status = stub.GetQueueStatus(ingest_pb2.GetQueueStatusRequest(job_id="job"), timeout=30).status
    assert [(e.epoch, e.pending, e.leased, e.completed, e.total) for e in status.epochs] == [
        (0, 6, 1, 1, 8),
        (1, 8, 0, 0, 8),
    ]


def test_the_queue_records_which_workers_attempt_completed_each_task(server, stub, ds) -> None:
    enqueue(stub)
    a = stub.LeaseTask(ingest_pb2.LeaseTaskRequest(job_id="job", worker_id="wa", max_tasks=2), timeout=30)
    b = lease(stub, worker="wb").tasks[0]
    for t in [*a.tasks, b]:
        complete(stub, t.lease_id)
    won = {c.partition_id: (c.worker_id, c.lease_id, c.attempt) for c in server.core.queue.completions("job")}
    assert won == {
        0: ("wa", a.tasks[0].lease_id, 0),
        1: ("wa", a.tasks[1].lease_id, 0),
        2: ("wb", b.lease_id, 0),
    }


def test_get_lease_says_what_became_of_it(stub, ds) -> None:
    enqueue(stub)
    t = lease(stub, worker="w9").tasks[0]
    got = stub.GetLease(ingest_pb2.GetLeaseRequest(lease_id=t.lease_id), timeout=30)
    assert (got.state, got.task_id, got.worker_id) == (ingest_pb2.LEASE_STATE_ACTIVE, t.task_id, "w9")
    complete(stub, t.lease_id)
    got = stub.GetLease(ingest_pb2.GetLeaseRequest(lease_id=t.lease_id), timeout=30)
    assert got.state == ingest_pb2.LEASE_STATE_COMPLETED
    short = lease(stub, seconds=SHORT).tasks[0]
    time.sleep(SHORT + 0.1)
    got = stub.GetLease(ingest_pb2.GetLeaseRequest(lease_id=short.lease_id), timeout=30)
    assert got.state == ingest_pb2.LEASE_STATE_EXPIRED
    err = rpc_error(stub.GetLease, ingest_pb2.GetLeaseRequest(lease_id="nope"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = rpc_error(stub.GetLease, ingest_pb2.GetLeaseRequest(lease_id=""))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- a task's output appended and the task completed in one commit ------------------------------


def output(stub, lease_id: str, n: int = 3, dataset: str = "out", slow: float = 0.0):  # type: ignore[no-untyped-def]
    data = mnist_like(n)

    def requests():  # type: ignore[no-untyped-def]
        first = True
        for req in append_requests(dataset, data, per_message=1):
            if first:
                req.complete_lease_id = lease_id
                first = False
            time.sleep(slow)
            yield req

    return stub.Append(requests(), timeout=30)


def partitions_of(stub, dataset: str = "out") -> int:
    return len(stub.ListPartitions(ingest_pb2.ListPartitionsRequest(dataset=dataset), timeout=30).partitions)


def test_a_tasks_output_lands_with_its_completion_exactly_once(stub, ds) -> None:
    create_mnist(stub, "out")
    enqueue(stub)
    t = lease(stub).tasks[0]
    resp = output(stub, t.lease_id)
    assert resp.records_appended == 3 and resp.status.completed == 1
    got = stub.GetLease(ingest_pb2.GetLeaseRequest(lease_id=t.lease_id), timeout=30)
    assert got.state == ingest_pb2.LEASE_STATE_COMPLETED
    # The same output sent again (a retry after a lost answer) is refused, nothing written.
    err = rpc_error(lambda r, timeout: output(stub, t.lease_id), None)
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "its output was committed then" in err.details()
    assert partitions_of(stub) == 1


def test_the_output_of_a_lapsed_lease_is_refused_and_nothing_is_written(stub, ds) -> None:
    create_mnist(stub, "out")
    enqueue(stub)
    t = lease(stub, seconds=SHORT).tasks[0]
    time.sleep(SHORT + 0.1)
    err = rpc_error(lambda r, timeout: output(stub, t.lease_id), None)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "expired" in err.details()
    # A lease that lapses while its output streams in is refused at the commit.
    t2 = lease(stub, seconds=SHORT).tasks[0]
    err = rpc_error(lambda r, timeout: output(stub, t2.lease_id, n=4, slow=SHORT / 2), None)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert partitions_of(stub) == 0
    status = stub.GetQueueStatus(ingest_pb2.GetQueueStatusRequest(job_id="job"), timeout=30).status
    assert status.completed == 0


def test_complete_lease_id_belongs_in_the_first_message(stub, ds) -> None:
    create_mnist(stub, "out")
    enqueue(stub)
    t = lease(stub).tasks[0]
    reqs = list(append_requests("out", mnist_like(2), per_message=1))
    reqs[1].complete_lease_id = t.lease_id
    err = rpc_error(stub.Append, iter(reqs))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "only the first" in err.details()
    err = rpc_error(lambda r, timeout: output(stub, "no-such-lease"), None)
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_an_epoch_from_a_partition_id_takes_the_newer_ones(stub, ds) -> None:
    resp = stub.EnqueueEpoch(
        ingest_pb2.EnqueueEpochRequest(job_id="f", dataset="ds", epoch=0, from_partition_id=6), timeout=30
    )
    assert resp.tasks_enqueued == 2
    err = rpc_error(
        stub.EnqueueEpoch,
        ingest_pb2.EnqueueEpochRequest(job_id="f2", dataset="ds", epoch=0, from_partition_id=8),
    )
    assert (
        err.code() == grpc.StatusCode.FAILED_PRECONDITION
        and "no partition with an id in [8, end)" in err.details()
    )
    resp = stub.EnqueueEpoch(
        ingest_pb2.EnqueueEpochRequest(
            job_id="f3", dataset="ds", epoch=0, from_partition_id=2, to_partition_id=4
        ),
        timeout=30,
    )
    assert resp.tasks_enqueued == 2


# -- completing through LeaseTask ------------------------------------------------------


def lease_completing(
    stub, done: list[str], max_tasks: int = 1, job: str = "job"
) -> ingest_pb2.LeaseTaskResponse:
    return stub.LeaseTask(
        ingest_pb2.LeaseTaskRequest(job_id=job, worker_id="w0", max_tasks=max_tasks, complete_lease_ids=done),
        timeout=30,
    )


def test_lease_task_completes_the_given_leases_and_leases_the_next_in_one_call(stub, ds) -> None:
    enqueue(stub)
    first = lease(stub).tasks[0]
    resp = lease_completing(stub, [first.lease_id], max_tasks=2)
    assert [t.partition_id for t in resp.tasks] == [1, 2]
    assert (resp.status.completed, resp.status.leased, resp.status.pending) == (1, 2, 5)
    got = stub.GetLease(ingest_pb2.GetLeaseRequest(lease_id=first.lease_id), timeout=30)
    assert got.state == ingest_pb2.LEASE_STATE_COMPLETED


def test_lease_task_may_complete_the_last_leases_when_nothing_is_left(stub, ds) -> None:
    enqueue(stub)
    held = stub.LeaseTask(ingest_pb2.LeaseTaskRequest(job_id="job", worker_id="w0", max_tasks=8), timeout=30)
    resp = lease_completing(stub, [t.lease_id for t in held.tasks])
    assert list(resp.tasks) == [] and resp.status.done and resp.status.completed == 8


def test_completing_an_already_completed_lease_again_is_ok(stub, ds) -> None:
    enqueue(stub)
    first = lease(stub).tasks[0]
    complete(stub, first.lease_id)
    resp = lease_completing(stub, [first.lease_id])
    assert resp.status.completed == 1 and len(resp.tasks) == 1


def test_a_lapsed_lease_among_the_completions_fails_the_call_and_nothing_happens(stub, ds) -> None:
    enqueue(stub)
    lapsed = lease(stub, seconds=SHORT).tasks[0]
    kept = lease(stub).tasks[0]
    time.sleep(SHORT + 0.2)
    err = rpc_error(
        stub.LeaseTask,
        ingest_pb2.LeaseTaskRequest(
            job_id="job", worker_id="w0", max_tasks=2, complete_lease_ids=[kept.lease_id, lapsed.lease_id]
        ),
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"cannot complete lease {lapsed.lease_id!r}: it expired" in err.details()
    status = stub.GetQueueStatus(ingest_pb2.GetQueueStatusRequest(job_id="job"), timeout=30).status
    assert (status.completed, status.leased, status.pending) == (0, 1, 7)  # kept: still only leased
    assert stub.GetLease(ingest_pb2.GetLeaseRequest(lease_id=kept.lease_id), timeout=30).state == (
        ingest_pb2.LEASE_STATE_ACTIVE
    )


def test_an_unknown_lease_among_the_completions_is_not_found(stub, ds) -> None:
    enqueue(stub)
    err = rpc_error(
        stub.LeaseTask, ingest_pb2.LeaseTaskRequest(job_id="job", worker_id="w0", complete_lease_ids=["nope"])
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "lease 'nope' not found" in err.details()
    assert stub.GetQueueStatus(ingest_pb2.GetQueueStatusRequest(job_id="job"), timeout=30).status.leased == 0


@pytest.mark.parametrize(
    ("ids", "expect"),
    [
        (["x"] * 65, "complete_lease_ids has 65 leases; at most 64 per call"),
        ([""], "complete_lease_ids entry"),
    ],
)
def test_bad_completions_are_invalid_argument(stub, ds, ids: list[str], expect: str) -> None:
    enqueue(stub)
    err = rpc_error(
        stub.LeaseTask, ingest_pb2.LeaseTaskRequest(job_id="job", worker_id="w0", complete_lease_ids=ids)
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expect in err.details()
