"""`mlmesh train`: create a job on the coordinator and follow it to the end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mlmesh.cli.common import DEFAULT_ROOT, console, fail, parse_kv, resolve, rpc_errors
from mlmesh.clients import TERMINAL_JOB_STATES, TrainerClient, job_spec, job_state_name, rpc_error_text
from mlmesh.trainer.v1 import trainer_pb2

# Coordinator restarts (supervised) are survivable: keep polling this long.
UNAVAILABLE_PATIENCE_SECONDS = 60.0


def job_progress() -> Progress:
    # Narrow enough for an 80-column terminal: the job id is printed before.
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=10),
        MofNCompleteColumn(),
        TextColumn("tasks"),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        console=console,
    )


def _stats(job: trainer_pb2.JobStatus) -> str:
    loss = f"{job.loss:.3f}" if job.steps else "-"
    return f"step {job.steps:,} loss {loss} {job.examples_per_second:,.0f} ex/s {job.active_workers}w"


def follow_job(
    client: TrainerClient, job_id: str, *, poll_seconds: float = 0.5, timeout: float | None = None
) -> tuple[trainer_pb2.JobStatus, int]:
    """Poll until the job is terminal, with a progress bar; (final status, peak active workers).

    TimeoutError after `timeout` seconds; transient UNAVAILABLE answers are retried.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    peak_workers = 0
    unavailable_since: float | None = None
    with job_progress() as progress:
        task = progress.add_task("PENDING", total=None, stats="")
        while True:
            try:
                job = client.get_job(job_id)
                unavailable_since = None
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
                    raise
                unavailable_since = unavailable_since or time.monotonic()
                if time.monotonic() - unavailable_since > UNAVAILABLE_PATIENCE_SECONDS:
                    raise
                progress.update(task, stats=f"coordinator unavailable: {rpc_error_text(e)}")
                time.sleep(poll_seconds)
                continue
            peak_workers = max(peak_workers, job.active_workers)
            progress.update(
                task,
                description=job_state_name(job.state),
                total=job.tasks_total or None,
                completed=job.tasks_completed,
                stats=_stats(job),
            )
            if job.state in TERMINAL_JOB_STATES:
                return job, peak_workers
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {job_id} still {job_state_name(job.state)} after {timeout:.0f}s "
                    f"({job.tasks_completed}/{job.tasks_total} tasks, {job.steps} steps)"
                )
            time.sleep(poll_seconds)


def print_job(job: trainer_pb2.JobStatus) -> None:
    state = job_state_name(job.state)
    colour = "green" if job.state == trainer_pb2.JOB_STATE_SUCCEEDED else "red"
    console.print(f"job {job.job_id}: [{colour}]{state}[/]")
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in sorted(job.eval_metrics.items()))
    if metrics:
        console.print(f"  eval: {metrics}")
    console.print(
        f"  {job.steps:,} steps, {job.examples:,} examples, {job.train_seconds:.1f}s training, "
        f"{job.examples_per_second:,.0f} examples/s"
    )
    if job.export_path:
        console.print(f"  exported version {job.model_version} to {job.export_path}")
    if job.error:
        console.print(f"  [red]error:[/] {job.error}")


def train(
    model: Annotated[str, typer.Option(help="Model factory 'package.module:function'.")] = (
        "mlmesh.models.fashion_cnn:build"
    ),
    train_dataset: Annotated[str, typer.Option(help="Dataset to train on.")] = "fashion-mnist-train",
    eval_dataset: Annotated[
        str, typer.Option(help="Dataset to evaluate on ('' = none).")
    ] = "fashion-mnist-test",
    epochs: Annotated[int, typer.Option(min=1, max=10_000)] = 5,
    batch_size: Annotated[int, typer.Option(min=1, max=1_000_000)] = 64,
    optimizer: Annotated[str, typer.Option(help="sgd, momentum, adam or adagrad.")] = "adam",
    lr: Annotated[float, typer.Option(min=0.0, help="Learning rate.")] = 1e-3,
    consistency: Annotated[
        str,
        typer.Option(
            help="async (apply on arrival), sync (one aggregated update per step) or bounded:<s> "
            "(no worker more than s steps ahead of the slowest)."
        ),
    ] = "async",
    skip_nonfinite_pushes: Annotated[
        bool,
        typer.Option("--skip-nonfinite-pushes", help="Skip and count NaN/Inf gradients instead of failing."),
    ] = False,
    model_name: Annotated[str, typer.Option(help="Export name in the model repository.")] = "fashion-mnist",
    model_arg: Annotated[
        list[str] | None,
        typer.Option("--model-arg", help="key=value passed to the model factory (repeatable)."),
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    eval_max_records: Annotated[int, typer.Option(min=0, help="Cap on eval records (0 = all).")] = 0,
    job_id: Annotated[str, typer.Option(help="Job id (default: generated).")] = "",
    detach: Annotated[
        bool, typer.Option("--detach", help="Create the job and return without following it.")
    ] = False,
    timeout: Annotated[float | None, typer.Option(min=1, help="Give up following after N seconds.")] = None,
    root: Annotated[
        Path, typer.Option("--root", help="Suite root directory (holds run/suite.json).")
    ] = DEFAULT_ROOT,
    coordinator_addr: Annotated[
        str | None, typer.Option("--coordinator-addr", help="trainer_svc coordinator HOST:PORT.")
    ] = None,
) -> None:
    """Train a model on the suite: CreateJob, then follow it until it ends.

    Exits 1 if the job FAILED or was CANCELLED.
    """
    if optimizer not in ("sgd", "momentum", "adam", "adagrad"):
        fail(f"--optimizer {optimizer!r} is not one of sgd, momentum, adam, adagrad")
    addr = resolve(root, coordinator_addr, "coordinator", "--coordinator-addr")
    spec = job_spec(
        model=model,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        epochs=epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        learning_rate=lr,
        model_name=model_name,
        model_args=parse_kv(model_arg or [], "--model-arg"),
        seed=seed,
        eval_max_records=eval_max_records,
        consistency=consistency,
        skip_nonfinite_pushes=skip_nonfinite_pushes,
    )
    with TrainerClient(addr) as client:
        with rpc_errors(f"CreateJob at {addr}"):
            job = client.create_job(spec, job_id)
        console.print(f"created job {job.job_id}")
        if detach:
            return
        try:
            with rpc_errors(f"following job {job.job_id}"):
                job, _ = follow_job(client, job.job_id, timeout=timeout)
        except TimeoutError as e:
            fail(str(e))
        except KeyboardInterrupt:
            console.print(f"stopped following; job {job.job_id} keeps running (`mlmesh status`)")
            raise typer.Exit(130) from None
    print_job(job)
    if job.state != trainer_pb2.JOB_STATE_SUCCEEDED:
        raise typer.Exit(1)
