"""The `mlmesh` command: `mlmesh --help`."""

from __future__ import annotations

from typing import Annotated

import typer

from mlmesh.cli import ingest, scenario, serving, transform
from mlmesh.cli.demo import demo
from mlmesh.cli.predict import predict
from mlmesh.cli.scale import scale
from mlmesh.cli.service import service
from mlmesh.cli.status import status
from mlmesh.cli.train import train
from mlmesh.cli.up import up
from mlmesh.logging import configure_logging

app = typer.Typer(
    name="mlmesh",
    help="Distributed ML as gRPC microservices: run the local suite, ingest, train, predict.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log supervisor events (starts, readiness).")
    ] = False,
) -> None:
    # Restarts and failures always show; routine starts only with -v.
    configure_logging("console", "info" if verbose else "warning")


app.command()(up)
app.command()(demo)
app.add_typer(ingest.app, name="ingest")
app.add_typer(transform.app, name="transform")
app.add_typer(scenario.app, name="scenario")
app.add_typer(serving.app, name="serving")
app.command()(train)
app.command()(predict)
app.command()(status)
app.command()(scale)
app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
)(service)


if __name__ == "__main__":
    app()
