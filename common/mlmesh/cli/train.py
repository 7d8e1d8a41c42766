"""`mlmesh train`: create a job on the coordinator and follow it to the end.

With `--workload NAME` (mlmesh.cli.workloads) the model, datasets and
training defaults come from the workload, its data is ingested if ingest
lacks it, and - when no suite runs under --root - a training-only suite
(ingest, shards, coordinator, workers) is started for the run and stopped
after it. Without a workload, `train` needs a running suite (`mlmesh up`):
a fresh suite would hold none of the datasets a custom job names.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mlmesh.cli.common import (
    DEFAULT_ROOT,
    SuiteAddresses,
    console,
    fail,
    parse_kv,
    pid_alive,
    read_suite,
    resolve,
    rpc_errors,
)
from mlmesh.cli.workloads import WORKLOADS, Workload, ensure_ingested
from mlmesh.clients import TERMINAL_JOB_STATES, TrainerClient, job_spec, job_state_name, rpc_error_text
from mlmesh.files import atomic_write_json
from mlmesh.trainer.v1 import trainer_pb2

# Coordinator restarts (supervised) are survivable: keep polling this long.
UNAVAILABLE_PATIENCE_SECONDS = 60.0
# A fresh coordinator imports TensorFlow on its first CreateJob: measured > 30 s
# (the clients' default deadline) at load average 13 on 2 cores.
CREATE_JOB_TIMEOUT_SECONDS = 180.0


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


def live_suite(root: Path) -> SuiteAddresses | None:
    """The suite described by <root>/run/suite.json if its supervisor is alive."""
    suite = read_suite(root)
    return suite if suite is not None and pid_alive(suite.supervisor_pid) else None


def apply_workload(ctx: typer.Context, workload: Workload, options: dict[str, Any]) -> dict[str, Any]:
    """`options` with the workload's defaults for every option left at the command's default."""
    out = dict(options)
    for name, value in workload.option_defaults().items():
        # By name: typer vendors click privately, so its ParameterSource is not public API.
        source = ctx.get_parameter_source(name)
        if source is None or source.name == "DEFAULT":
            out[name] = value
    return out


def job_summary(job: trainer_pb2.JobStatus, peak_workers: int) -> dict[str, Any]:
    """The figures of a finished job; `test_<metric>` for each eval metric (loss too)."""
    train_seconds = float(job.train_seconds)
    out: dict[str, Any] = {
        "job_id": job.job_id,
        "job_state": job_state_name(job.state),
        "steps": int(job.steps),
        "examples": int(job.examples),
        "train_seconds": round(train_seconds, 3),
        # The job's average; JobStatus.examples_per_second is a recent moving rate.
        "examples_per_second": round(job.examples / train_seconds, 1) if train_seconds > 0 else 0.0,
        "active_workers_peak": peak_workers,
        "eval_metrics": {k: float(v) for k, v in sorted(job.eval_metrics.items())},
        "model_version": int(job.model_version),
        "export_path": job.export_path,
    }
    for name, value in sorted(job.eval_metrics.items()):
        out[f"test_{name}"] = round(float(value), 6)
    if job.error:
        out["error"] = job.error
    return out


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: the machine is shared, so figures carry them."""
    return [round(x, 2) for x in os.getloadavg()]


def train(
    ctx: typer.Context,
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
    continuous: Annotated[
        bool,
        typer.Option(
            "--continuous",
            help="Train on a growing dataset: each epoch covers the partitions there when it starts "
            "(data that arrives joins the next epoch) and a model version is exported after each.",
        ),
    ] = False,
    exactly_once: Annotated[
        bool,
        typer.Option(
            "--exactly-once",
            help="Async only: apply each partition's updates once, when its task completes, however "
            "workers fail (updates become visible a partition at a time).",
        ),
    ] = False,
    window_hours: Annotated[
        float,
        typer.Option(min=0.0, help="With --continuous: each epoch only the partitions of the last N hours."),
    ] = 0.0,
    model_name: Annotated[str, typer.Option(help="Export name in the model repository.")] = "fashion-mnist",
    model_arg: Annotated[
        list[str] | None,
        typer.Option("--model-arg", help="key=value passed to the model factory (repeatable)."),
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    eval_max_records: Annotated[int, typer.Option(min=0, help="Cap on eval records (0 = all).")] = 0,
    workload: Annotated[
        str | None,
        typer.Option(
            help=f"A named workload ({', '.join(WORKLOADS)}): its model, datasets and tuned defaults "
            "for every option not given; ingests its data if needed, and starts a training-only "
            "suite for the run when none is running under --root."
        ),
    ] = None,
    summary: Annotated[
        Path | None, typer.Option("--summary", help="Write the job's figures as JSON to this file.")
    ] = None,
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
    ingest_addr: Annotated[
        str | None,
        typer.Option("--ingest-addr", help="ingest_svc HOST:PORT, for --workload's ingest."),
    ] = None,
) -> None:
    """Train a model on the suite: CreateJob, then follow it until it ends.

    Exits 1 if the job FAILED or was CANCELLED.
    """
    started = time.perf_counter()
    preset: Workload | None = None
    opts: dict[str, Any] = {
        "model": model,
        "train_dataset": train_dataset,
        "eval_dataset": eval_dataset,
        "model_name": model_name,
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "lr": lr,
    }
    if workload is not None:
        if workload not in WORKLOADS:
            fail(f"--workload {workload!r} is not one of {', '.join(WORKLOADS)}")
        preset = WORKLOADS[workload]
        opts = apply_workload(ctx, preset, opts)
    if opts["optimizer"] not in ("sgd", "momentum", "adam", "adagrad"):
        fail(f"--optimizer {opts['optimizer']!r} is not one of sgd, momentum, adam, adagrad")
    if detach and summary is not None:
        fail("--summary needs the job followed to its end; drop --detach")
    model_args = parse_kv(model_arg or [], "--model-arg")
    spec = job_spec(
        model=opts["model"],
        train_dataset=opts["train_dataset"],
        eval_dataset=opts["eval_dataset"],
        epochs=opts["epochs"],
        batch_size=opts["batch_size"],
        optimizer=opts["optimizer"],
        learning_rate=opts["lr"],
        model_name=opts["model_name"],
        model_args=model_args,
        seed=seed,
        eval_max_records=eval_max_records,
        consistency=consistency,
        skip_nonfinite_pushes=skip_nonfinite_pushes,
        continuous=continuous,
        window_hours=window_hours,
        exactly_once=exactly_once,
    )
    if window_hours and not continuous:
        fail("--window-hours needs --continuous")
    report: dict[str, Any] = {
        "ok": False,
        "workload": workload,
        **{k: opts[k] for k in ("model", "train_dataset", "eval_dataset", "epochs", "batch_size")},
        "optimizer": opts["optimizer"],
        "learning_rate": opts["lr"],
        "consistency": consistency,
        "continuous": continuous,
        "exactly_once": exactly_once,
        "model_args": model_args,
        "seed": seed,
        "load_average_before": load_average(),
    }
    try:
        suite = None if coordinator_addr else live_suite(root)
        ingest_needed = preset is not None and _uses_workload_data(preset, opts)
        if preset is not None and coordinator_addr is None and suite is None:
            if detach:
                fail(
                    f"--detach needs a running suite (`mlmesh up`): none runs under {root}, and the one "
                    "this command would start stops when it returns"
                )
            _train_on_own_suite(root, preset if ingest_needed else None, spec, job_id, timeout, report)
        else:
            if suite is not None:
                report["ps_shards"], report["workers"] = len(suite.ps), len(suite.workers)
            addr = resolve(root, coordinator_addr, "coordinator", "--coordinator-addr")
            if preset is not None and ingest_needed:
                _ingest(preset, resolve(root, ingest_addr, "ingest", "--ingest-addr"), report)
            _create_and_follow(addr, spec, job_id, detach, timeout, report)
    except typer.Exit as e:
        report.setdefault("error", f"exited with code {e.exit_code} (see the error above)")
        raise
    finally:
        report["total_seconds"] = round(time.perf_counter() - started, 3)
        report["load_average"] = load_average()
        if summary is not None:
            atomic_write_json(summary, report)
            console.print(f"summary written to {summary}")


def _uses_workload_data(preset: Workload, opts: dict[str, Any]) -> bool:
    return opts["train_dataset"] == preset.train_dataset or opts["eval_dataset"] == preset.eval_dataset


def _ingest(preset: Workload, addr: str, report: dict[str, Any]) -> None:
    t = time.perf_counter()
    results = ensure_ingested(preset, addr)
    report["ingest_seconds"] = round(time.perf_counter() - t, 3)
    report["ingested"] = {r.dataset: r.records for r in results if not r.skipped}


def _create_and_follow(
    addr: str,
    spec: trainer_pb2.JobSpec,
    job_id: str,
    detach: bool,
    timeout: float | None,
    report: dict[str, Any],
    *,
    job_keeps_running: bool = True,
) -> None:
    with (
        TrainerClient(addr, timeout=CREATE_JOB_TIMEOUT_SECONDS) as client,
        rpc_errors(f"CreateJob at {addr}"),
    ):
        job = client.create_job(spec, job_id)
    console.print(f"created job {job.job_id}")
    report["job_id"] = job.job_id
    if detach:
        report["ok"] = True
        return
    with TrainerClient(addr) as client:
        try:
            with rpc_errors(f"following job {job.job_id}"):
                job, peak = follow_job(client, job.job_id, timeout=timeout)
        except TimeoutError as e:
            fail(str(e))
        except KeyboardInterrupt:
            if not job_keeps_running:
                raise
            console.print(f"stopped following; job {job.job_id} keeps running (`mlmesh status`)")
            raise typer.Exit(130) from None
    print_job(job)
    report.update(job_summary(job, peak))
    report["ok"] = job.state == trainer_pb2.JOB_STATE_SUCCEEDED
    if not report["ok"]:
        raise typer.Exit(1)


def _train_on_own_suite(
    root: Path,
    preset: Workload | None,
    spec: trainer_pb2.JobSpec,
    job_id: str,
    timeout: float | None,
    report: dict[str, Any],
) -> None:
    """Start a training-only suite under `root`, ingest `preset`'s data (unless None),
    train, and stop every process."""
    # Imported here: `train` against a running suite needs none of the supervisor.
    from mlmesh.cli.suite import SuiteConfig, make_supervisor, start_suite
    from mlmesh.cli.up import remove_suite_file
    from mlmesh.supervisor import SupervisorError, terminate_on_signals

    root = root.resolve()
    cfg = SuiteConfig(root=root, serving=False)
    terminate_on_signals()
    sup = make_supervisor(cfg)
    console.print(
        f"no suite is running under {root}: starting a training-only one for this run "
        f"(ingest, {cfg.shards} shards, coordinator, {cfg.workers} workers; stopped afterwards)"
    )
    try:
        with sup:
            t = time.perf_counter()
            with console.status("starting the suite (each service must report SERVING)"):
                addrs = start_suite(sup, cfg)
            report.update(startup_seconds=round(time.perf_counter() - t, 3), suite_started=True)
            report["ps_shards"], report["workers"] = len(addrs.ps), len(addrs.workers)
            if preset is not None:
                _ingest(preset, addrs.ingest, report)
            _create_and_follow(
                addrs.coordinator, spec, job_id, False, timeout, report, job_keeps_running=False
            )
    except SupervisorError as e:
        fail(f"{e}\n(every service started was stopped)")
    except KeyboardInterrupt:
        report["error"] = "interrupted"
        console.print("interrupted; stopped every service")
        raise typer.Exit(130) from None
    finally:
        remove_suite_file(root)
