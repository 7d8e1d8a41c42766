"""`mlmesh status`: health of every service, datasets, jobs and model versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.table import Table

from mlmesh.cli.common import DEFAULT_ROOT, console, fail, pid_alive, read_suite, suite_path
from mlmesh.clients import (
    IngestClient,
    ServingClient,
    TrainerClient,
    check_health,
    job_state_name,
    rpc_error_text,
    version_state_name,
)


def _health_colour(status: str) -> str:
    return {"SERVING": "green", "NOT_SERVING": "yellow"}.get(status, "red")


def status(
    root: Annotated[
        Path, typer.Option("--root", help="Suite root directory (holds run/suite.json).")
    ] = DEFAULT_ROOT,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="Model names to report (default: from jobs and the repo)."),
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Per-call timeout in seconds.")] = 2.0,
) -> None:
    """Show the suite in suite.json: service health, datasets, jobs, model versions.

    Exits 1 if any service is not SERVING.
    """
    suite = read_suite(root)
    if suite is None:
        fail(f"{suite_path(root)} is missing; start the suite with `mlmesh up`")
    sup_alive = pid_alive(suite.supervisor_pid)
    console.print(
        f"suite at {suite.root}: supervisor pid {suite.supervisor_pid} "
        + ("[green]running[/]" if sup_alive else "[red]not running[/]")
    )

    services = Table(title="services")
    for col in ("service", "address", "pid", "health", "restarts"):
        services.add_column(col)
    unhealthy = 0
    for svc in suite.services:
        addr = svc.get("addr") or ""
        if not addr:
            health = "NO ADDRESS"
        elif svc["name"] == "gateway":
            # Envoy answers gRPC only for the serving API; probe it through that.
            health = _gateway_health(addr, timeout)
        else:
            health = check_health(addr, "", timeout)
        unhealthy += health != "SERVING"
        services.add_row(
            svc["name"],
            addr or "-",
            str(svc.get("pid") or "-"),
            f"[{_health_colour(health)}]{health}[/]",
            str(svc.get("restarts", 0)),
        )
    console.print(services)

    model_names = set(model or [])
    if suite.ingest:
        _datasets(suite.ingest, timeout)
    if suite.coordinator:
        model_names |= _jobs(suite.coordinator, timeout)
    if not model and suite.model_repo and Path(suite.model_repo).is_dir():
        model_names |= {
            p.name for p in Path(suite.model_repo).iterdir() if p.is_dir() and not p.name.startswith(".")
        }
    if suite.serving and model_names:
        _models(suite.serving, sorted(model_names), timeout)
    if unhealthy:
        raise typer.Exit(1)


def _gateway_health(addr: str, timeout: float) -> str:
    with ServingClient(addr, timeout) as client:
        try:
            client.model_status("__mlmesh_status_probe__")
        except grpc.RpcError as e:
            code = e.code()  # type: ignore[attr-defined]
            # Any answer from a backend (even NOT_FOUND) means Envoy routes to a live replica.
            return "UNREACHABLE" if code == grpc.StatusCode.UNAVAILABLE else "SERVING"
    return "SERVING"


def _datasets(addr: str, timeout: float) -> None:
    table = Table(title="datasets")
    for col in ("dataset", "records", "partitions", "bytes", "schema"):
        table.add_column(col)
    try:
        with IngestClient(addr, timeout) as client:
            datasets = client.list_datasets()
    except grpc.RpcError as e:
        console.print(f"[red]datasets unavailable:[/] {rpc_error_text(e)}")
        return
    from mlmesh.tensor import describe

    for ds in datasets:
        schema = ", ".join(f"{f.name}:{describe(f.dtype, list(f.shape))}" for f in ds.schema.features)
        table.add_row(ds.name, f"{ds.num_records:,}", str(ds.num_partitions), f"{ds.num_bytes:,}", schema)
    console.print(table)


def _jobs(addr: str, timeout: float) -> set[str]:
    table = Table(title="jobs")
    for col in ("job", "state", "tasks", "steps", "loss", "eval", "model", "version"):
        table.add_column(col)
    try:
        with TrainerClient(addr, timeout) as client:
            jobs = client.list_jobs()
    except grpc.RpcError as e:
        console.print(f"[red]jobs unavailable:[/] {rpc_error_text(e)}")
        return set()
    for job in jobs:
        evals = " ".join(f"{k}={v:.3f}" for k, v in sorted(job.eval_metrics.items()))
        table.add_row(
            job.job_id,
            job_state_name(job.state),
            f"{job.tasks_completed}/{job.tasks_total}",
            f"{job.steps:,}",
            f"{job.loss:.4f}" if job.steps else "-",
            evals or "-",
            job.spec.model_name or "-",
            str(job.model_version or "-"),
        )
    console.print(table)
    return {j.spec.model_name for j in jobs if j.spec.model_name}


def _models(replicas: list[str], names: list[str], timeout: float) -> None:
    table = Table(title="model versions")
    for col in ("replica", "model", "versions"):
        table.add_column(col)
    for addr in replicas:
        with ServingClient(addr, timeout) as client:
            for name in names:
                try:
                    versions = client.model_status(name)
                    text = ", ".join(f"{v.version}:{version_state_name(v.state)}" for v in versions) or "-"
                except grpc.RpcError as e:
                    text = rpc_error_text(e)
                table.add_row(addr, name, text)
    console.print(table)
