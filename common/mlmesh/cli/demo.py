"""`mlmesh demo`: the whole system end to end on Fashion-MNIST.

start the suite → ingest train + test → train a CNN across the workers and
shards → wait until every serving replica has the exported version AVAILABLE →
predict through Envoy (HTTP/JSON and gRPC) and straight at each replica, and
check the answers agree → summary table + <root>/demo-summary.json → stop all.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import grpc
import numpy as np
import typer
from rich.table import Table

from mlmesh.cli.common import DEFAULT_ROOT, SuiteAddresses, console, err_console, fail
from mlmesh.cli.ingest import IngestResult, ingest_arrays, ingest_progress, partition_bytes_for
from mlmesh.cli.predict import predict_grpc, predict_http, to_instances
from mlmesh.cli.suite import SuiteConfig, make_supervisor, serve_forever, start_suite
from mlmesh.cli.train import CREATE_JOB_TIMEOUT_SECONDS, follow_job
from mlmesh.cli.up import check_log_level, check_not_running, remove_suite_file
from mlmesh.clients import (
    HttpError,
    IngestClient,
    ServingClient,
    TrainerClient,
    job_spec,
    job_state_name,
    rpc_error_text,
    version_state_name,
)
from mlmesh.files import atomic_write_json
from mlmesh.serving.v1 import serving_pb2
from mlmesh.supervisor import SupervisorError, terminate_on_signals
from mlmesh.trainer.v1 import trainer_pb2

MODEL = "mlmesh.models.fashion_cnn:build"
MODEL_NAME = "fashion-mnist"
TRAIN, TEST = "fashion-mnist-train", "fashion-mnist-test"
RTOL = 1e-5
PREDICT_CHUNK = 32


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


def auto_batch_size(train_records: int) -> int:
    """64 (measured: 0.90 test accuracy after 5 async epochs on the full set),
    halved down to 16 until an epoch has about 100 steps: a small demo run must
    still take enough steps to learn something."""
    batch = 64
    while batch > 16 and train_records // batch < 100:
        batch //= 2
    return batch


def _partitions(records: int, batch_size: int, workers: int) -> int:
    # Enough partitions that every worker gets tasks, few enough that a task is several steps.
    return min(16, max(2 * workers, records // max(1, batch_size * 8)))


def _ingest(
    addr: str, data: dict[str, dict[str, np.ndarray]], batch_size: int, workers: int
) -> list[IngestResult]:
    results = []
    with IngestClient(addr) as client, ingest_progress() as progress:
        for name, arrays in data.items():
            n = len(arrays["label"])
            mpb = partition_bytes_for(n, 28 * 28 + 8, _partitions(n, batch_size, workers))
            results.append(ingest_arrays(client, name, arrays, max_partition_bytes=mpb, progress=progress))
    return results


def replica_version_states(
    replicas: list[str], model_name: str, timeout: float = 5.0
) -> dict[str, list[serving_pb2.ModelVersionStatus] | str]:
    """Each replica's versions of `model_name` (GetModelStatus), or the failed call's text."""
    out: dict[str, list[serving_pb2.ModelVersionStatus] | str] = {}
    for addr in replicas:
        with ServingClient(addr, timeout=timeout) as client:
            try:
                out[addr] = client.model_status(model_name)
            except grpc.RpcError as e:
                out[addr] = rpc_error_text(e)
    return out


def version_state(versions: list[serving_pb2.ModelVersionStatus] | str, version: int) -> str:
    """'AVAILABLE', 'LOADING', ... of `version` on one replica; 'NOT LOADED' when the replica
    does not list it; the call's error text when the replica did not answer."""
    if isinstance(versions, str):
        return versions
    match = [v for v in versions if v.version == version]
    return version_state_name(match[0].state) if match else "NOT LOADED"


def _wait_available(replicas: list[str], model_name: str, version: int, timeout: float) -> dict[str, str]:
    """Block until every replica reports `version` AVAILABLE; the final state per replica."""
    deadline = time.monotonic() + timeout
    states = dict.fromkeys(replicas, "UNKNOWN")
    with console.status(f"waiting for {len(replicas)} serving replicas to load version {version}"):
        while True:
            pending = [addr for addr in replicas if states[addr] != "AVAILABLE"]
            for addr, versions in replica_version_states(pending, model_name).items():
                states[addr] = version_state(versions, version)
                if states[addr] == "FAILED":
                    assert not isinstance(versions, str)
                    error = next(v.error for v in versions if v.version == version)
                    raise DemoError(f"replica {addr} failed to load {model_name} version {version}: {error}")
            if all(s == "AVAILABLE" for s in states.values()):
                return states
            if time.monotonic() > deadline:
                raise DemoError(
                    f"not every replica has {model_name} version {version} AVAILABLE "
                    f"after {timeout:.0f}s: {states}"
                )
            time.sleep(0.25)


def _check_predictions(
    addrs: SuiteAddresses, images: np.ndarray, version: int, summary: dict[str, Any]
) -> list[str]:
    """Same request via HTTP/JSON and gRPC through Envoy and direct to each replica; problems found."""
    problems: list[str] = []
    inputs = {"image": images.astype(np.float32)}
    reference: np.ndarray | None = None
    direct: dict[str, bool] = {}
    for addr in addrs.serving:
        try:
            v, out = predict_grpc(addr, MODEL_NAME, inputs)
        except grpc.RpcError as e:
            problems.append(f"direct Predict to replica {addr} failed: {rpc_error_text(e)}")
            direct[addr] = False
            continue
        if v != version:
            problems.append(f"replica {addr} answered with version {v}, expected {version}")
        if reference is None:
            reference = out
        ok = out.shape == reference.shape and bool(np.allclose(out, reference, rtol=RTOL))
        direct[addr] = ok
        if not ok:
            problems.append(f"replica {addr} disagrees with replica {addrs.serving[0]}")
    summary["direct_ok"] = direct
    if reference is None:
        summary["gateway_http_ok"] = summary["gateway_grpc_ok"] = False
        return problems

    for kind in ("http", "grpc"):
        key = f"gateway_{kind}_ok"
        try:
            if kind == "http":
                v, out = predict_http(addrs.gateway_http, MODEL_NAME, to_instances(images, "image"))
            else:
                v, out = predict_grpc(addrs.gateway_grpc, MODEL_NAME, inputs)
        except (grpc.RpcError, HttpError, ValueError, OSError) as e:
            text = rpc_error_text(e) if isinstance(e, grpc.RpcError) else str(e)
            problems.append(f"{kind.upper()} predict through the gateway failed: {text}")
            summary[key] = False
            continue
        same = out.shape == reference.shape and bool(np.allclose(out, reference, rtol=RTOL))
        if not same:
            diff = float(np.max(np.abs(out - reference))) if out.shape == reference.shape else float("nan")
            problems.append(
                f"{kind.upper()} predictions through the gateway differ from a direct call "
                f"(shape {list(out.shape)} vs {list(reference.shape)}, max abs diff {diff:.3g})"
            )
        if v and v != version:
            problems.append(f"{kind.upper()} answer came from version {v}, expected {version}")
        summary[key] = same
    summary["sample_predictions"] = [int(k) for k in np.argmax(reference, axis=1)]
    return problems


def _served_accuracy(addr: str, images: np.ndarray, labels: np.ndarray) -> float:
    correct = 0
    with ServingClient(addr) as client:
        for start in range(0, len(images), PREDICT_CHUNK):
            chunk = images[start : start + PREDICT_CHUNK].astype(np.float32)
            _, outputs = client.predict(MODEL_NAME, {"image": chunk})
            probs = outputs[sorted(outputs)[0]]
            correct += int(np.sum(np.argmax(probs, axis=1) == labels[start : start + PREDICT_CHUNK]))
    return correct / max(1, len(images))


def run_demo_steps(
    addrs: SuiteAddresses,
    data: dict[str, dict[str, np.ndarray]],
    summary: dict[str, Any],
    *,
    epochs: int,
    batch_size: int,
    optimizer: str,
    lr: float,
    train_timeout: float,
    serve_timeout: float,
    samples: int,
    consistency: str = "async",
) -> list[str]:
    """Ingest, train, serve, predict; fills `summary`; returns the problems found."""
    console.rule("ingest")
    t = time.perf_counter()
    results = _ingest(addrs.ingest, data, batch_size, len(addrs.workers))
    summary["ingest_seconds"] = round(time.perf_counter() - t, 3)
    summary["datasets"] = {r.dataset: {"records": r.records, "partitions": r.partitions} for r in results}
    for r in results:
        console.print(
            f"{r.dataset}: {r.records:,} records in {r.partitions} partitions"
            + (" (kept)" if r.skipped else "")
        )

    console.rule("train")
    spec = job_spec(
        model=MODEL,
        train_dataset=TRAIN,
        eval_dataset=TEST,
        epochs=epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        learning_rate=lr,
        model_name=MODEL_NAME,
        consistency=consistency,
    )
    t = time.perf_counter()
    with TrainerClient(addrs.coordinator, timeout=CREATE_JOB_TIMEOUT_SECONDS) as client:
        job = client.create_job(spec)
        summary["job_id"] = job.job_id
        console.print(
            f"job {job.job_id}: {epochs} epochs, batch {batch_size}, {optimizer} lr {lr}, {consistency}"
        )
        job, peak = follow_job(client, job.job_id, timeout=train_timeout)
    wall = time.perf_counter() - t
    train_seconds = job.train_seconds or wall
    summary.update(
        job_state=job_state_name(job.state),
        train_seconds=round(train_seconds, 3),
        train_wall_seconds=round(wall, 3),
        steps=int(job.steps),
        examples=int(job.examples),
        # The job's average over its training phase; JobStatus.examples_per_second
        # is a recent moving rate (what a progress bar wants), not the whole job's.
        examples_per_second=round(job.examples / max(train_seconds, 1e-9), 1),
        active_workers_peak=peak,
        eval_metrics={k: float(v) for k, v in job.eval_metrics.items()},
        eval_loss=float(job.eval_metrics["loss"]) if "loss" in job.eval_metrics else None,
        model_version=int(job.model_version),
        export_path=job.export_path,
    )
    if job.state != trainer_pb2.JOB_STATE_SUCCEEDED:
        raise DemoError(
            f"job {job.job_id} ended {job_state_name(job.state)}: {job.error or 'no error given'}"
        )
    if job.model_version <= 0:
        raise DemoError(f"job {job.job_id} succeeded but reports no exported model version")
    console.print(
        f"job {job.job_id} SUCCEEDED: {job.steps:,} steps, {summary['examples_per_second']:,.0f} examples/s, "
        f"eval {dict(job.eval_metrics)}; exported version {job.model_version}"
    )

    console.rule("serve")
    t = time.perf_counter()
    states = _wait_available(addrs.serving, MODEL_NAME, job.model_version, serve_timeout)
    summary["serve_wait_seconds"] = round(time.perf_counter() - t, 3)
    summary["replicas_available"] = sum(s == "AVAILABLE" for s in states.values())

    console.rule("predict")
    images, labels = data[TEST]["image"], data[TEST]["label"]
    sample = images[:samples]
    problems = _check_predictions(addrs, sample, job.model_version, summary)
    summary["sample_labels"] = [int(x) for x in labels[:samples]]
    n_eval = min(len(images), 1000)
    try:
        summary["served_accuracy"] = round(
            _served_accuracy(addrs.gateway_grpc, images[:n_eval], labels[:n_eval]), 4
        )
        summary["served_accuracy_examples"] = n_eval
    except grpc.RpcError as e:
        problems.append(f"accuracy check through the gateway failed: {rpc_error_text(e)}")
    acc = job.eval_metrics.get("accuracy")
    if acc is None:
        acc = job.eval_metrics.get("sparse_categorical_accuracy")
    summary["test_accuracy"] = round(float(acc), 4) if acc is not None else summary.get("served_accuracy")
    summary["test_accuracy_source"] = "job eval" if acc is not None else "served predictions"
    return problems


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title="mlmesh demo summary")
    table.add_column("what")
    table.add_column("value", justify="right")
    keys = (
        "ok",
        "test_accuracy",
        "eval_loss",
        "served_accuracy",
        "gateway_http_ok",
        "gateway_grpc_ok",
        "workers",
        "ps_shards",
        "serving_replicas",
        "replicas_available",
        "steps",
        "examples_per_second",
        "train_seconds",
        "ingest_seconds",
        "startup_seconds",
        "total_seconds",
        "model_version",
        "export_path",
    )
    for key in keys:
        if key in summary:
            value = summary[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    return table


def write_summary(root: Path, summary: dict[str, Any]) -> Path:
    path = root / "demo-summary.json"
    atomic_write_json(path, summary)
    return path


def demo(
    epochs: Annotated[int, typer.Option(min=1, max=1000, help="Training epochs.")] = 5,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65536,
            help="Examples per step per worker (default: 64, smaller when --limit-train leaves "
            "fewer than ~100 steps per epoch).",
        ),
    ] = None,
    limit_train: Annotated[
        int | None, typer.Option(min=1, max=60_000, help="Use the first N train images.")
    ] = None,
    limit_test: Annotated[
        int | None, typer.Option(min=1, max=10_000, help="Use the first N test images.")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Training workers.")] = 2,
    shards: Annotated[int, typer.Option(min=1, max=64, help="Parameter-server shards.")] = 2,
    replicas: Annotated[int, typer.Option(min=1, max=64, help="Serving replicas.")] = 2,
    optimizer: Annotated[str, typer.Option(help="sgd, momentum, adam or adagrad.")] = "adam",
    lr: Annotated[float, typer.Option(min=0.0, help="Learning rate.")] = 1e-3,
    consistency: Annotated[
        str, typer.Option(help="async, sync or bounded:<s> (see `mlmesh train --help`).")
    ] = "async",
    samples: Annotated[int, typer.Option(min=1, max=256, help="Test images sent through the gateway.")] = 8,
    root: Annotated[
        Path, typer.Option("--root", help="Directory for all data, models, logs.")
    ] = DEFAULT_ROOT,
    keep_running: Annotated[
        bool, typer.Option("--keep-running", help="Keep the suite up afterwards, like `mlmesh up`.")
    ] = False,
    ready_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds each service may take to be ready.")
    ] = 180.0,
    train_timeout: Annotated[float, typer.Option(min=1, help="Seconds the job may take.")] = 3600.0,
    serve_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds for replicas to load the model.")
    ] = 180.0,
    log_level: Annotated[str, typer.Option(help="Services' log level.")] = "info",
) -> None:
    """Run the whole system end to end on Fashion-MNIST, check it, and stop it.

    Writes <root>/demo-summary.json (also on failure, with ok=false and the
    error). Exits 1 if any step fails; every process started is stopped.
    """
    from mlmesh.data import DataUnavailable, IdxFormatError, load_fashion_mnist

    if optimizer not in ("sgd", "momentum", "adam", "adagrad"):
        fail(f"--optimizer {optimizer!r} is not one of sgd, momentum, adam, adagrad")
    check_log_level(log_level)
    started = time.perf_counter()
    root = root.resolve()
    check_not_running(root)
    terminate_on_signals()
    try:
        train_x, train_y = load_fashion_mnist("train", limit_train)
        test_x, test_y = load_fashion_mnist("test", limit_test)
    except (DataUnavailable, IdxFormatError) as e:
        fail(str(e))
    data = {TRAIN: {"image": train_x, "label": train_y}, TEST: {"image": test_x, "label": test_y}}
    if batch_size is None:
        batch_size = auto_batch_size(len(train_y))
    summary: dict[str, Any] = {
        "ok": False,
        "root": str(root),
        "train_records": len(train_y),
        "test_records": len(test_y),
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "learning_rate": lr,
        "consistency": consistency,
        "workers": workers,
        "ps_shards": shards,
        "serving_replicas": replicas,
    }
    cfg = SuiteConfig(
        root=root,
        shards=shards,
        replicas=replicas,
        workers=workers,
        log_level=log_level,
        ready_timeout=ready_timeout,
    )
    error: str | None = None
    code = 0
    sup = make_supervisor(cfg)
    try:
        with sup:
            console.rule(f"starting {1 + shards + replicas + 2 + workers} services under {root}")
            t = time.perf_counter()
            with console.status("starting the suite (each service must report SERVING)"):
                addrs = start_suite(sup, cfg)
            summary["startup_seconds"] = round(time.perf_counter() - t, 3)
            summary.update(
                workers=len(addrs.workers),
                ps_shards=len(addrs.ps),
                serving_replicas=len(addrs.serving),
                gateway=addrs.gateway_http,
            )
            problems = run_demo_steps(
                addrs,
                data,
                summary,
                epochs=epochs,
                batch_size=batch_size,
                optimizer=optimizer,
                lr=lr,
                train_timeout=train_timeout,
                serve_timeout=serve_timeout,
                samples=samples,
                consistency=consistency,
            )
            if problems:
                raise DemoError("; ".join(problems))
            summary["ok"] = True
            summary["total_seconds"] = round(time.perf_counter() - started, 3)
            console.print(summary_table(summary))
            console.print(f"summary written to {write_summary(root, summary)}")
            if keep_running:
                serve_forever(sup, addrs)
    except KeyboardInterrupt:
        if not summary["ok"]:  # after a finished demo (--keep-running) Ctrl-C is just "stop"
            error, code = "interrupted", 130
    except (DemoError, SupervisorError, TimeoutError) as e:
        error, code = str(e), 1
    except grpc.RpcError as e:
        error, code = f"a call failed: {rpc_error_text(e)}", 1
    finally:
        summary["pids"] = [c.pid for c in sup.children() if c.pid]
        remove_suite_file(root)
    if not summary["ok"]:
        summary["total_seconds"] = round(time.perf_counter() - started, 3)
    if error is not None:
        summary["ok"] = False
        summary["error"] = error
    path = write_summary(root, summary)
    if error is not None:
        console.print(summary_table(summary))
        err_console.print(
            f"[bold red]demo failed:[/] {error}\nsummary: {path}; logs: {root / 'run' / 'logs'}/"
        )
        raise typer.Exit(code)
    console.print("every service stopped")
