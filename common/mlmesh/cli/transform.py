"""`mlmesh transform`: a registered transform over every partition of a dataset, by a pool
of workers, into a derived dataset (exactly once per partition; see `mlmesh.batch`)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mlmesh import tensor
from mlmesh.batch.client import QueueClient
from mlmesh.batch.worker import run_worker
from mlmesh.cli.common import DEFAULT_ROOT, console, fail, parse_kv, resolve, rpc_errors
from mlmesh.clients import IngestClient
from mlmesh.errors import MlmeshError
from mlmesh.ingest.v1 import ingest_pb2
from mlmesh.logging import configure_logging
from mlmesh.transform import Schema, load_transform

app = typer.Typer(help="Derive a dataset by applying a transform to every partition.", no_args_is_help=True)

ArgOpt = Annotated[list[str] | None, typer.Option("--arg", help="key=value for the transform (repeatable).")]
RootOpt = Annotated[Path, typer.Option("--root", help="Suite root directory (holds run/suite.json).")]
IngestOpt = Annotated[str | None, typer.Option("--ingest-addr", help="ingest_svc HOST:PORT.")]


def source_schema(client: IngestClient, name: str) -> Schema:
    dataset = client.get_dataset(name)
    if dataset is None:
        fail(f"source dataset {name!r} not found")
    return {
        f.name: (tensor.numpy_dtype(f.dtype, f"feature {f.name!r}").name, tuple(int(d) for d in f.shape))
        for f in dataset.schema.features
    }


def job_id_for(source: str, target: str) -> str:
    return f"transform:{source}->{target}"


def ensure_target(client: IngestClient, target: str, output: Schema) -> None:
    schema = ingest_pb2.DatasetSchema(
        features=[
            ingest_pb2.FeatureSpec(name=n, dtype=tensor.dtype_from_name(d), shape=list(s))
            for n, (d, s) in output.items()
        ]
    )
    client.create_dataset(target, schema)  # idempotent for the same schema; ALREADY_EXISTS otherwise


def enqueue_new(client: IngestClient, job: str, source: str, epoch: int, from_id: int) -> tuple[int, int]:
    """Enqueue, as `epoch`, exactly the source's partitions from id `from_id` that exist now:
    (tasks enqueued, the id to start from next time). Ids grow with every commit, so each
    partition lands in exactly one epoch however fast the source grows."""
    listing = client.stub.ListPartitions(
        ingest_pb2.ListPartitionsRequest(dataset=source), timeout=client.timeout
    )
    upto = max((p.partition_id + 1 for p in listing.partitions), default=0)
    if upto <= from_id:
        return 0, from_id
    req = ingest_pb2.EnqueueEpochRequest(
        job_id=job, dataset=source, epoch=epoch, from_partition_id=from_id, to_partition_id=upto
    )
    return int(client.stub.EnqueueEpoch(req, timeout=client.timeout).tasks_enqueued), upto


@app.command("run")
def run(
    source: Annotated[str, typer.Option(help="Dataset to read.")],
    target: Annotated[str, typer.Option(help="Dataset to write (created with the transform's schema).")],
    transform: Annotated[str, typer.Option(help="Transform factory 'package.module:function'.")],
    arg: ArgOpt = None,
    workers: Annotated[
        int, typer.Option(min=0, max=64, help="Local workers to start (0: bring your own).")
    ] = 2,
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep transforming partitions as they arrive in the source.")
    ] = False,
    poll_seconds: Annotated[float, typer.Option(min=0.05, help="With --follow: how often to look.")] = 1.0,
    until_idle: Annotated[
        float | None, typer.Option(min=0.0, help="With --follow: stop once nothing arrived for N seconds.")
    ] = None,
    root: RootOpt = DEFAULT_ROOT,
    ingest_addr: IngestOpt = None,
) -> None:
    """Run a transform job to its end (or, with --follow, until Ctrl-C / --until-idle)."""
    from mlmesh.lifeline import die_with_parent

    die_with_parent()  # when a parent (e.g. `mlmesh scenario`) asked for it: never outlive it
    addr = resolve(root, ingest_addr, "ingest", "--ingest-addr")
    args = parse_kv(arg or [], "--arg")
    job = job_id_for(source, target)
    with rpc_errors("transform"), IngestClient(addr) as client:
        schema = source_schema(client, source)
        try:
            spec = load_transform(transform, schema, args)
        except MlmeshError as e:
            fail(e.message)
        ensure_target(client, target, spec.output)
        epoch, next_id = 0, 0
        status = client.stub.GetQueueStatus
        try:  # a job run before continues where it was: its epochs hold partitions 0..total-1
            known = status(ingest_pb2.GetQueueStatusRequest(job_id=job), timeout=client.timeout).status
            epoch = max((e.epoch for e in known.epochs), default=-1) + 1
            next_id = known.total
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
        enqueued, next_id = enqueue_new(client, job, source, epoch, next_id)
        if enqueued:
            epoch += 1
        pool = [
            _spawn_worker(addr, job, f"{job}#w{i}-{os.getpid()}", source, target, transform, args, follow)
            for i in range(workers)
        ]
        stopping = False

        def on_signal(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        old = signal.signal(signal.SIGINT, on_signal)
        last_new = time.monotonic()
        try:
            with Progress(
                TextColumn("[bold]transform"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TextColumn("partitions"),
                TimeElapsedColumn(),
                console=console,
            ) as progress:
                bar = progress.add_task("transform", total=None)
                while not stopping:
                    if follow:
                        q = _queue_status(client, job)
                    else:
                        q = status(
                            ingest_pb2.GetQueueStatusRequest(job_id=job), timeout=client.timeout
                        ).status
                    progress.update(bar, completed=q.completed, total=q.total or None)
                    if follow:
                        n, next_id = enqueue_new(client, job, source, epoch, next_id)
                        if n:
                            epoch += 1
                            last_new = time.monotonic()
                        elif until_idle is not None and q.done and time.monotonic() - last_new >= until_idle:
                            break
                    elif q.done:
                        break
                    if pool and all(p.poll() is not None for p in pool) and not q.done:
                        codes = [p.poll() for p in pool]
                        fail(f"every transform worker exited before the job was done (codes {codes})")
                    time.sleep(poll_seconds if follow else 0.2)
        finally:
            signal.signal(signal.SIGINT, old)
            for p in pool:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in pool:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        target_ds = client.get_dataset(target)
        records = target_ds.num_records if target_ds is not None else 0
        console.print(
            f"[green]done[/green]: {q.completed} partitions of {source!r} -> {target!r} ({records:,} records)"
        )


def _queue_status(client: IngestClient, job: str) -> ingest_pb2.QueueStatus:
    """The job's queue; an empty one while no epoch was ever enqueued (--follow of a source
    that has no partition yet)."""
    req = ingest_pb2.GetQueueStatusRequest(job_id=job)
    try:
        return client.stub.GetQueueStatus(req, timeout=client.timeout).status
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
            raise
        return ingest_pb2.QueueStatus(job_id=job)


def _spawn_worker(
    addr: str,
    job: str,
    worker_id: str,
    source: str,
    target: str,
    transform: str,
    args: dict[str, str],
    follow: bool,
) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "mlmesh.cli.main", "transform", "worker",
        "--ingest-addr", addr, "--job", job, "--worker-id", worker_id,
        "--source", source, "--target", target, "--transform", transform,
        *(f"--arg={k}={v}" for k, v in args.items()),
        *(["--follow"] if follow else []),
    ]  # fmt: skip
    env = {**os.environ, "MLMESH_PARENT_PID": str(os.getpid())}
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, process_group=0)


@app.command("worker")
def worker(
    job: Annotated[str, typer.Option(help="The transform job's id.")],
    source: Annotated[str, typer.Option()],
    target: Annotated[str, typer.Option()],
    transform: Annotated[str, typer.Option()],
    arg: ArgOpt = None,
    worker_id: Annotated[str, typer.Option(help="Identity in the queue (default: host-pid).")] = "",
    follow: Annotated[bool, typer.Option("--follow")] = False,
    depth: Annotated[
        int, typer.Option(min=1, max=16, help="Leases held: one transforming, the rest read ahead.")
    ] = 2,
    lease_seconds: Annotated[float, typer.Option(min=1.0)] = 30.0,
    root: RootOpt = DEFAULT_ROOT,
    ingest_addr: IngestOpt = None,
) -> None:
    """One worker of a transform job (start more anywhere to scale up; stop some to scale down)."""
    from mlmesh.lifeline import die_with_parent

    die_with_parent()
    configure_logging("console", "info")
    addr = resolve(root, ingest_addr, "ingest", "--ingest-addr")
    args = parse_kv(arg or [], "--arg")
    wid = worker_id or f"{os.uname().nodename}-{os.getpid()}"
    with rpc_errors("transform worker"), IngestClient(addr) as sync_client:
        schema = source_schema(sync_client, source)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        client = QueueClient(addr)
        try:
            stats = await run_worker(
                client, job, wid, target, transform, schema, args,
                depth=depth, lease_seconds=lease_seconds, follow=follow, stop=stop,
            )  # fmt: skip
        finally:
            await client.close()
        console.print(
            f"worker {wid}: {stats.committed} partitions committed, {stats.lost} lost, "
            f"{stats.records_in:,} records in, {stats.records_out:,} out"
        )

    try:
        asyncio.run(main())
    except MlmeshError as e:
        fail(e.message)
