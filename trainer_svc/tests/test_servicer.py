"""TrainerService through a real channel to an in-process coordinator: every
bad input gets its precise status. Peers (ingest, shards) are unreachable here;
the validations tested come before any call to them."""

from __future__ import annotations

import math
import time
from typing import Any

import grpc
import pytest
from mlmesh.paramserver.v1 import paramserver_pb2
from mlmesh.trainer.v1 import trainer_pb2

from trainer_svc.core.jobs import Job, JobState
from trainer_svc.core.spec import JobSpec, validate_spec
from trainer_svc.core.store import JobStore
from trainer_svc.tests.conftest import DEAD_ADDR, CoordinatorServer

pytestmark = pytest.mark.unit


def good_spec(**overrides: Any) -> trainer_pb2.JobSpec:
    spec = trainer_pb2.JobSpec(
        model="trainer_svc.tests.models:tiny",
        train_dataset="train",
        eval_dataset="test",
        epochs=1,
        batch_size=8,
        model_name="tiny",
        optimizer=paramserver_pb2.OptimizerSpec(kind="adam", learning_rate=1e-3),
    )
    for key, value in overrides.items():
        if key == "optimizer":
            spec.optimizer.CopyFrom(value)
        else:
            setattr(spec, key, value)
    return spec


def code_of(call: Any, request: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        call(request, timeout=30)
    return e.value.code(), e.value.details()


def running_job(server: CoordinatorServer, job_id: str = "job-a") -> Job:
    """Put a RUNNING job in the coordinator, as a started job would be."""
    spec = validate_spec(
        JobSpec(
            model="trainer_svc.tests.models:tiny",
            train_dataset="train",
            epochs=1,
            batch_size=8,
            model_name="t",
        )
    )
    job = Job(job_id, spec, state=JobState.RUNNING, started_unix=time.time())

    def add() -> None:
        assert server.coordinator is not None
        server.coordinator.jobs[job_id] = job
        server.coordinator.store.save(job)

    server.call(add)
    return job


@pytest.mark.parametrize(
    ("request_", "code", "fragment"),
    [
        (trainer_pb2.CreateJobRequest(), grpc.StatusCode.INVALID_ARGUMENT, "spec is required"),
        (
            trainer_pb2.CreateJobRequest(spec=good_spec(model="nowhere.at.all:build")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "cannot import module 'nowhere.at.all'",
        ),
        (
            trainer_pb2.CreateJobRequest(spec=good_spec(model="trainer_svc.tests.models:raises")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "failed to build: RuntimeError: boom",
        ),
        (
            trainer_pb2.CreateJobRequest(spec=good_spec(epochs=0)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.epochs must be in 1..1000, got 0",
        ),
        (
            trainer_pb2.CreateJobRequest(spec=good_spec(batch_size=-4)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.batch_size must be in 1..65536, got -4",
        ),
        (
            trainer_pb2.CreateJobRequest(
                spec=good_spec(optimizer=paramserver_pb2.OptimizerSpec(kind="lion"))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "optimizer.kind 'lion' is not supported",
        ),
        (
            trainer_pb2.CreateJobRequest(spec=good_spec(model_name="")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.model_name is required",
        ),
        (
            trainer_pb2.CreateJobRequest(spec=good_spec(model_name="a/../../b")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "is not a valid directory name",
        ),
        (
            trainer_pb2.CreateJobRequest(spec=good_spec(), job_id="has space"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "job_id 'has space' is invalid",
        ),
    ],
)
def test_create_job_rejects_bad_specs(
    trainer: Any, request_: Any, code: grpc.StatusCode, fragment: str
) -> None:
    got_code, details = code_of(trainer.CreateJob, request_)
    assert got_code == code
    assert fragment in details


def test_create_job_with_unreachable_ingest_is_unavailable_and_creates_nothing(trainer: Any) -> None:
    code, details = code_of(trainer.CreateJob, trainer_pb2.CreateJobRequest(spec=good_spec(), job_id="j1"))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "ingest GetDataset('train')" in details
    assert list(trainer.ListJobs(trainer_pb2.ListJobsRequest()).jobs) == []


def test_unknown_job_ids_are_not_found(trainer: Any) -> None:
    for call, request in (
        (trainer.GetJob, trainer_pb2.GetJobRequest(job_id="ghost")),
        (trainer.CancelJob, trainer_pb2.CancelJobRequest(job_id="ghost")),
        (trainer.ReportProgress, trainer_pb2.ReportProgressRequest(job_id="ghost", worker_id="w")),
    ):
        code, details = code_of(call, request)
        assert code == grpc.StatusCode.NOT_FOUND
        assert "job 'ghost' does not exist" in details


def test_empty_ids_are_invalid_argument(trainer: Any) -> None:
    for call, request, fragment in (
        (trainer.GetJob, trainer_pb2.GetJobRequest(), "job_id is required"),
        (trainer.CancelJob, trainer_pb2.CancelJobRequest(), "job_id is required"),
        (trainer.AcquireWork, trainer_pb2.AcquireWorkRequest(), "worker_id is required"),
        (trainer.AcquireWork, trainer_pb2.AcquireWorkRequest(worker_id="w" * 300), "at most 256 allowed"),
        (trainer.ReportProgress, trainer_pb2.ReportProgressRequest(worker_id="w"), "job_id is required"),
        (trainer.ReportProgress, trainer_pb2.ReportProgressRequest(job_id="j"), "worker_id is required"),
    ):
        code, details = code_of(call, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert fragment in details


def test_bad_progress_values_are_invalid_argument(
    coordinator_server: CoordinatorServer, trainer: Any
) -> None:
    running_job(coordinator_server)
    for fields, fragment in (
        ({"steps": -1}, "steps must be >= 0, got -1"),
        ({"examples": -5}, "examples must be >= 0, got -5"),
        ({"loss_sum": math.nan}, "loss_sum must be finite, got nan"),
        ({"loss_sum": math.inf}, "loss_sum must be finite, got inf"),
    ):
        request = trainer_pb2.ReportProgressRequest(job_id="job-a", worker_id="w", **fields)
        code, details = code_of(trainer.ReportProgress, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert fragment in details
    job = trainer.GetJob(trainer_pb2.GetJobRequest(job_id="job-a")).job
    assert job.steps == 0 and job.examples == 0  # nothing of the bad reports counted


def test_no_running_job_means_no_work(trainer: Any) -> None:
    resp = trainer.AcquireWork(trainer_pb2.AcquireWorkRequest(worker_id="w1", device="CPU:0"))
    assert not resp.has_work and resp.job_id == ""


def test_workers_get_the_running_job_and_report_into_it(
    coordinator_server: CoordinatorServer, trainer: Any
) -> None:
    running_job(coordinator_server)
    work = trainer.AcquireWork(trainer_pb2.AcquireWorkRequest(worker_id="w1", device="CPU:0"))
    assert work.has_work and work.job_id == "job-a"
    assert work.spec.model == "trainer_svc.tests.models:tiny" and work.spec.optimizer.kind == "adam"
    assert work.ingest_addr == DEAD_ADDR and list(work.ps_addrs) == [DEAD_ADDR, DEAD_ADDR]
    for steps, loss_sum in ((4, 8.0), (6, 6.0)):
        resp = trainer.ReportProgress(
            trainer_pb2.ReportProgressRequest(
                job_id="job-a", worker_id="w1", steps=steps, examples=steps * 8, loss_sum=loss_sum
            )
        )
        assert resp.state == trainer_pb2.JOB_STATE_RUNNING
    job = trainer.GetJob(trainer_pb2.GetJobRequest(job_id="job-a")).job
    assert (job.steps, job.examples) == (10, 80)
    assert job.loss == pytest.approx(14.0 / 10)
    assert job.examples_per_second > 0


def test_cancel_stops_workers_and_is_idempotent(coordinator_server: CoordinatorServer, trainer: Any) -> None:
    running_job(coordinator_server)
    job = trainer.CancelJob(trainer_pb2.CancelJobRequest(job_id="job-a")).job
    assert job.state == trainer_pb2.JOB_STATE_CANCELLED and job.finished_unix > 0
    again = trainer.CancelJob(trainer_pb2.CancelJobRequest(job_id="job-a")).job
    assert again.state == trainer_pb2.JOB_STATE_CANCELLED and again.finished_unix == job.finished_unix
    report = trainer.ReportProgress(
        trainer_pb2.ReportProgressRequest(job_id="job-a", worker_id="w1", steps=1)
    )
    assert report.state == trainer_pb2.JOB_STATE_CANCELLED
    assert not trainer.AcquireWork(trainer_pb2.AcquireWorkRequest(worker_id="w1")).has_work


def test_cancelling_a_finished_job_is_failed_precondition(
    coordinator_server: CoordinatorServer, trainer: Any
) -> None:
    job = running_job(coordinator_server)
    coordinator_server.call(lambda: setattr(job, "state", JobState.SUCCEEDED))
    code, details = code_of(trainer.CancelJob, trainer_pb2.CancelJobRequest(job_id="job-a"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "already SUCCEEDED" in details


def test_job_state_outlives_the_coordinator(coordinator_server: CoordinatorServer, trainer: Any) -> None:
    running_job(coordinator_server)
    trainer.CancelJob(trainer_pb2.CancelJobRequest(job_id="job-a"))
    [job] = JobStore(coordinator_server.work_dir).load_all()
    assert job.job_id == "job-a" and job.state is JobState.CANCELLED
    restarted = CoordinatorServer(coordinator_server.work_dir).start()
    try:
        assert restarted.coordinator is not None
        assert restarted.call(lambda: restarted.coordinator.get_job("job-a").state) is JobState.CANCELLED  # type: ignore[union-attr]
    finally:
        restarted.stop()
