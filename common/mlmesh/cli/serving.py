"""`mlmesh serving`: run-time tuning of serving replicas (ServingAdminService, on each replica's port)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf import json_format
from rich.table import Table

from mlmesh.channels import sync_channel
from mlmesh.cli.common import DEFAULT_ROOT, console, fail, parse_kv, read_suite, rpc_errors, suite_path
from mlmesh.serving.v1 import admin_pb2, admin_pb2_grpc

app = typer.Typer(help="Serving replicas: read and tune batching at run time.", no_args_is_help=True)

SCALARS = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads", "max_queue")
KNOBS = (*SCALARS, "allowed_batch_sizes")


def parameters_from(pairs: list[str]) -> admin_pb2.BatchingParameters:
    """`k=v` pairs → the fields to set; a bad key or value fails naming it."""
    params = admin_pb2.BatchingParameters()
    for key, value in parse_kv(pairs, "--set").items():
        if key == "allowed_batch_sizes":
            parts = [p.strip() for p in value.split(",") if p.strip()]
            if not all(p.isdigit() for p in parts):
                fail(f"--set allowed_batch_sizes={value!r}: expected comma-separated integers (or empty)")
            params.allowed_batch_sizes.SetInParent()  # present even when empty: padding off
            params.allowed_batch_sizes.sizes.extend(int(p) for p in parts)
        elif key in SCALARS:
            try:
                setattr(params, key, int(value))
            except ValueError:
                fail(f"--set {key}={value!r}: expected an integer")
        else:
            fail(f"--set {key}: unknown knob; expected one of {', '.join(KNOBS)}")
    return params


def targets_of(target: str | None, root: Path) -> list[str]:
    if target:
        return [target]
    suite = read_suite(root)
    if suite is None:
        fail(f"no --target given and no running suite ({suite_path(root)} is missing)")
    if not suite.serving:
        fail(f"{suite_path(root)} lists no serving replicas; pass --target HOST:PORT")
    return list(suite.serving)


def knobs(params: admin_pb2.BatchingParameters) -> dict[str, Any]:
    out: dict[str, Any] = {name: getattr(params, name) for name in SCALARS}
    out["allowed_batch_sizes"] = list(params.allowed_batch_sizes.sizes)
    return out


def batching(
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help=f"knob=value (repeatable): {', '.join(KNOBS)}. allowed_batch_sizes=2,4,8 "
            "(empty turns padding off). Without --set, only shows the knobs.",
        ),
    ] = None,
    model: Annotated[
        str, typer.Option("--model", help="One model; default: every loaded model and the defaults.")
    ] = "",
    target: Annotated[
        str | None, typer.Option("--target", help="One replica HOST:PORT (not the gateway).")
    ] = None,
    root: Annotated[
        Path, typer.Option("--root", help="Suite root: applies to every serving replica it runs.")
    ] = DEFAULT_ROOT,
    raw: Annotated[bool, typer.Option("--json", help="Print the answers as JSON.")] = False,
    timeout: Annotated[float, typer.Option(min=0.1)] = 10.0,
) -> None:
    """Show or change the batching knobs of serving replicas (TF Serving's names)."""
    params = parameters_from(list(set_ or [])) if set_ else None
    answers: dict[str, Any] = {}
    for addr in targets_of(target, root):
        what = f"batching on {addr}"
        if params is not None and answers:
            what += f" (already changed: {', '.join(answers)})"
        with rpc_errors(what), sync_channel(addr) as channel:
            stub = admin_pb2_grpc.ServingAdminServiceStub(channel)
            if params is None:
                answer: Any = stub.GetBatching(
                    admin_pb2.GetBatchingRequest(model_name=model), timeout=timeout
                )
            else:
                answer = stub.SetBatching(
                    admin_pb2.SetBatchingRequest(model_name=model, parameters=params), timeout=timeout
                )
        answers[addr] = answer
    if raw:
        console.print_json(
            json.dumps(
                {
                    addr: json_format.MessageToDict(a, preserving_proto_field_name=True)
                    for addr, a in answers.items()
                }
            )
        )
        return
    table = Table(title="batching" if params is None else "batching (after the change)")
    for col in ("replica", "model", *KNOBS):
        table.add_column(col, no_wrap=True)
    for addr, answer in answers.items():
        rows = [("(defaults)", answer.defaults)] if not model else []
        rows += [(m.model_name, m.parameters) for m in answer.models]
        for name, p in rows:
            values = knobs(p)
            table.add_row(
                addr,
                name,
                *(str(values[k]) if k in SCALARS else ",".join(map(str, values[k])) or "-" for k in KNOBS),
            )
    console.print(table)


app.command()(batching)
