"""`mlmesh up`: start the local suite and keep it running until Ctrl-C / SIGTERM."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated

import typer

from mlmesh.cli.common import DEFAULT_ROOT, console, fail, pid_alive, read_suite, suite_path
from mlmesh.cli.suite import SuiteConfig, make_supervisor, serve_forever, start_suite
from mlmesh.supervisor import SupervisorError, terminate_on_signals


def check_not_running(root: Path) -> None:
    """Refuse to start a second suite on the same root while the first lives."""
    suite = read_suite(root)
    if suite is not None and pid_alive(suite.supervisor_pid):
        fail(
            f"a suite is already running under {root} (supervisor pid {suite.supervisor_pid}); "
            "stop it first or use another --root"
        )


LOG_LEVELS = ("debug", "info", "warning", "error")


def check_log_level(level: str) -> None:
    if level not in LOG_LEVELS:
        fail(f"--log-level {level!r} is not one of {', '.join(LOG_LEVELS)}")


def remove_suite_file(root: Path) -> None:
    """Remove suite.json if it is ours (it would point at stopped processes)."""
    import os

    path = suite_path(root)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("supervisor_pid") == os.getpid():
            path.unlink()


def up(
    root: Annotated[
        Path, typer.Option("--root", help="Directory for all data, models, logs.")
    ] = DEFAULT_ROOT,
    shards: Annotated[int, typer.Option(min=1, max=64, help="Parameter-server shards.")] = 2,
    replicas: Annotated[int, typer.Option(min=1, max=64, help="Serving replicas.")] = 2,
    workers: Annotated[int, typer.Option(min=0, max=64, help="Training workers.")] = 2,
    ready_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds each service may take to be ready.")
    ] = 180.0,
    grace_seconds: Annotated[
        float, typer.Option(min=0, help="On stop: SIGTERM, then SIGKILL after this.")
    ] = 10.0,
    log_level: Annotated[str, typer.Option(help="Services' log level.")] = "info",
    checkpoint_every_steps: Annotated[
        int, typer.Option(min=0, help="Shards checkpoint a job after this many updates (0 = off).")
    ] = 200,
    checkpoint_every_seconds: Annotated[
        float, typer.Option(min=0, help="... and at least this often while it changes (0 = off).")
    ] = 30.0,
) -> None:
    """Start the whole suite on loopback and keep it running until Ctrl-C / SIGTERM.

    Starts ingest, the parameter-server shards, the serving replicas, the Envoy
    gateway, the coordinator and the workers; writes <root>/run/suite.json.
    """
    check_log_level(log_level)
    root = root.resolve()
    check_not_running(root)
    terminate_on_signals()
    cfg = SuiteConfig(
        root=root,
        shards=shards,
        replicas=replicas,
        workers=workers,
        log_level=log_level,
        ready_timeout=ready_timeout,
        grace_seconds=grace_seconds,
        checkpoint_every_steps=checkpoint_every_steps,
        checkpoint_every_seconds=checkpoint_every_seconds,
    )
    sup = make_supervisor(cfg)
    try:
        with sup:
            with console.status("starting the suite (each service must report SERVING)"):
                addrs = start_suite(sup, cfg)
            serve_forever(sup, addrs, cfg)
    except KeyboardInterrupt:
        console.print("stopped every service")
    except SupervisorError as e:
        fail(f"{e}\n(every service started was stopped)")
    finally:
        remove_suite_file(root)
