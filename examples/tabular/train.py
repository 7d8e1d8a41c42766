"""Train the churn model on the uploaded datasets and wait for the result:

python -m examples.tabular.train --trainer-addr 127.0.0.1:PORT [--epochs 3]
"""

from __future__ import annotations

import argparse
import time

import grpc
from mlmesh.channels import sync_channel
from mlmesh.paramserver.v1 import paramserver_pb2
from mlmesh.trainer.v1 import trainer_pb2, trainer_pb2_grpc

TERMINAL = {trainer_pb2.JOB_STATE_SUCCEEDED, trainer_pb2.JOB_STATE_FAILED, trainer_pb2.JOB_STATE_CANCELLED}


def job_spec(name: str = "churn", epochs: int = 3, batch_size: int = 128) -> trainer_pb2.JobSpec:
    return trainer_pb2.JobSpec(
        model="examples.tabular.model:build",
        model_args={"hidden_units": "32", "embedding_dim": "8"},
        train_dataset=f"{name}-train",
        eval_dataset=f"{name}-test",
        epochs=epochs,
        batch_size=batch_size,
        optimizer=paramserver_pb2.OptimizerSpec(kind="adam", learning_rate=3e-3),
        model_name="churn",
        seed=7,
    )


def train(channel: grpc.Channel, spec: trainer_pb2.JobSpec, timeout: float = 600.0) -> trainer_pb2.JobStatus:
    """Create the job and poll it until it ends (or `timeout` passes)."""
    stub = trainer_pb2_grpc.TrainerServiceStub(channel)
    job = stub.CreateJob(trainer_pb2.CreateJobRequest(spec=spec), timeout=120).job
    deadline = time.monotonic() + timeout
    while job.state not in TERMINAL and time.monotonic() < deadline:
        time.sleep(1.0)
        job = stub.GetJob(trainer_pb2.GetJobRequest(job_id=job.job_id), timeout=10).job
    return job


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trainer-addr", required=True)
    parser.add_argument("--name", default="churn")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with sync_channel(args.trainer_addr) as channel:
        job = train(channel, job_spec(args.name, args.epochs))
    print(f"{job.job_id}: {trainer_pb2.JobState.Name(job.state)} {dict(job.eval_metrics)} {job.export_path}")
    if job.error:
        print(job.error)


if __name__ == "__main__":
    main()
