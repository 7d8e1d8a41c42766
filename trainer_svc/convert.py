"""Proto <-> domain conversion for the trainer's own messages."""

from __future__ import annotations

from mlmesh.paramserver.v1 import paramserver_pb2
from mlmesh.trainer.v1 import trainer_pb2

from trainer_svc.core.jobs import Job, JobState
from trainer_svc.core.spec import JobSpec
from trainer_svc.core.types import OptimizerConfig


def state_to_proto(state: JobState) -> trainer_pb2.JobState.ValueType:
    return trainer_pb2.JobState.Value(f"JOB_STATE_{state.value}")


def state_from_proto(value: int) -> str:
    """The domain state name ("RUNNING"), or "UNSPECIFIED"."""
    return trainer_pb2.JobState.Name(value).removeprefix("JOB_STATE_")  # type: ignore[arg-type]


def optimizer_from_proto(pb: paramserver_pb2.OptimizerSpec) -> OptimizerConfig:
    return OptimizerConfig(
        kind=pb.kind,
        learning_rate=pb.learning_rate,
        beta_1=pb.beta_1,
        beta_2=pb.beta_2,
        epsilon=pb.epsilon,
        momentum=pb.momentum,
        nesterov=pb.nesterov,
    )


def optimizer_to_proto(opt: OptimizerConfig) -> paramserver_pb2.OptimizerSpec:
    return paramserver_pb2.OptimizerSpec(
        kind=opt.kind,
        learning_rate=opt.learning_rate,
        beta_1=opt.beta_1,
        beta_2=opt.beta_2,
        epsilon=opt.epsilon,
        momentum=opt.momentum,
        nesterov=opt.nesterov,
    )


def spec_from_proto(pb: trainer_pb2.JobSpec) -> JobSpec:
    """Unvalidated: `validate_spec` checks and normalizes it."""
    return JobSpec(
        model=pb.model,
        model_args=dict(pb.model_args),
        train_dataset=pb.train_dataset,
        eval_dataset=pb.eval_dataset,
        epochs=pb.epochs,
        batch_size=pb.batch_size,
        optimizer=optimizer_from_proto(pb.optimizer),
        model_name=pb.model_name,
        seed=pb.seed,
        eval_max_records=pb.eval_max_records,
        consistency=pb.consistency,
        worker_lease_seconds=pb.worker_lease_seconds,
        skip_nonfinite_pushes=pb.skip_nonfinite_pushes,
        continuous=pb.continuous,
        window_hours=pb.window_hours,
        exactly_once=pb.exactly_once,
    )


def spec_to_proto(spec: JobSpec) -> trainer_pb2.JobSpec:
    return trainer_pb2.JobSpec(
        model=spec.model,
        model_args=spec.model_args,
        train_dataset=spec.train_dataset,
        eval_dataset=spec.eval_dataset,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        optimizer=optimizer_to_proto(spec.optimizer),
        model_name=spec.model_name,
        seed=spec.seed,
        eval_max_records=spec.eval_max_records,
        consistency=spec.consistency,
        worker_lease_seconds=spec.worker_lease_seconds,
        skip_nonfinite_pushes=spec.skip_nonfinite_pushes,
        continuous=spec.continuous,
        window_hours=spec.window_hours,
        exactly_once=spec.exactly_once,
    )


def job_to_proto(job: Job) -> trainer_pb2.JobStatus:
    return trainer_pb2.JobStatus(
        job_id=job.job_id,
        spec=spec_to_proto(job.spec),
        state=state_to_proto(job.state),
        steps=job.steps,
        examples=job.examples,
        loss=job.loss,
        examples_per_second=job.examples_per_second,
        tasks_total=job.tasks_total,
        tasks_completed=job.tasks_completed,
        eval_metrics=job.eval_metrics,
        export_path=job.export_path,
        model_version=job.model_version,
        error=job.error,
        created_unix=job.created_unix,
        started_unix=job.started_unix,
        finished_unix=job.finished_unix,
        active_workers=job.active_workers,
        train_seconds=job.train_seconds,
        epochs_completed=job.epochs_completed,
        epochs_exported=job.epochs_exported,
    )
