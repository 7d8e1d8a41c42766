"""`mlmesh service <name> [flags]`: run one service in the foreground.

The same process as `python -m <package>`: the service's own flags follow the
name (`mlmesh service ingest --data-dir D --port 50051`). This is what a
container's entry point or a hand-run deployment calls.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

# name -> argv after `python`: the service's module (and its role).
SERVICES: dict[str, list[str]] = {
    "ingest": ["-m", "ingest_svc"],
    "paramserver": ["-m", "paramserver_svc"],
    "coordinator": ["-m", "trainer_svc", "coordinator"],
    "worker": ["-m", "trainer_svc", "worker"],
    "serving": ["-m", "serving_svc"],
    "gateway": ["-m", "gateway"],
}


def service(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(help=f"One of: {', '.join(SERVICES)}.", show_default=False)
    ] = None,
) -> None:
    """Run one service in the foreground; flags after the name go to the service
    (`mlmesh service serving --help` lists them)."""
    if name is None or name in ("--help", "-h"):  # flags pass through, so help is ours to print
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    if name not in SERVICES:
        typer.echo(f"unknown service {name!r}; expected one of: {', '.join(SERVICES)}", err=True)
        raise typer.Exit(2)
    argv = [sys.executable, *SERVICES[name], *ctx.args]
    # exec: the service owns the process (signals, exit code), as under `python -m`.
    os.execv(sys.executable, argv)
