"""`mlmesh scenario`: runnable scenarios, end to end on the local suite.

`mlmesh scenario train-failures` (logic in `mlmesh.scenarios`): a SYNTHETIC fleet streamed
into ingest, a partition per chunk → a windowing transform job (`mlmesh transform run
--follow`, a child process) → a continuous training job of failure_mlp, a version per epoch
→ each version, once every serving replica has it AVAILABLE, scored THROUGH THE GATEWAY
(gRPC Predict via Envoy) on a held-out later span of the fleet → a table per version and a
summary JSON. Bounded by --minutes of wall time; stops everything it started.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from rich import box
from rich.table import Table

from mlmesh.cli.common import DEFAULT_ROOT, SuiteAddresses, console, err_console, fail
from mlmesh.cli.scenario_run import EarlierRunError, ScenarioError, TrainFailuresRun, mmss
from mlmesh.cli.suite import SuiteConfig, make_supervisor, start_suite
from mlmesh.cli.train import live_suite, load_average
from mlmesh.cli.up import check_log_level, remove_suite_file
from mlmesh.clients import rpc_error_text
from mlmesh.files import atomic_write_json
from mlmesh.scenarios import train_failures as tf_scenario
from mlmesh.scenarios.train_failures import HeldOut, ScenarioConfig
from mlmesh.supervisor import SupervisorError, terminate_on_signals

app = typer.Typer(help="Run a scenario end to end on the local suite.", no_args_is_help=True)


def versions_table(report: dict[str, Any]) -> Table:
    """One row per version evaluated: what it was trained on and how it scored."""
    table = Table(title="served versions, scored through the gateway on the held-out span", box=box.SIMPLE)
    for col in ("version", "epochs", "sim h", "windows", "prec", "recall", "F1", "AUC", "served"):
        table.add_column(col, justify="right", no_wrap=True)
    for v in report.get("versions", []):
        if "auc" not in v:
            continue
        table.add_row(
            str(v["version"]),
            str(v["epochs"]),
            f"{v['simulated_hours']:.1f}",
            f"{v['records']:,}",
            f"{v['precision']:.3f}",
            f"{v['recall']:.3f}",
            f"{v['f1']:.3f}",
            f"{v['auc']:.3f}",
            mmss(v["served_after_s"]),
        )
    return table


@app.command("train-failures")
def train_failures(
    minutes: Annotated[
        float,
        typer.Option(help="Wall minutes the whole run takes (suite start included); then everything stops."),
    ] = 5.0,
    speedup: Annotated[
        float,
        typer.Option(
            help="Simulated seconds per wall second. The default fleet makes 1 MB per simulated hour "
            "(the book's 1 GB/hour scaled down 1000x): 600 streams an hour of it every 6 s, "
            "600 MB per wall hour (1000: the book's 1 GB per wall hour)."
        ),
    ] = tf_scenario.DEFAULT_SPEEDUP,
    components: Annotated[int, typer.Option(help="Fleet size (320 = 1 MB per simulated hour).")] = (
        ScenarioConfig.components
    ),
    seed: Annotated[int, typer.Option(help="The fleet's seed (the stream and the held-out span).")] = 0,
    chunk_minutes: Annotated[
        int, typer.Option(help="Simulated minutes per appended chunk (one raw partition each).")
    ] = tf_scenario.DEFAULT_CHUNK_MINUTES,
    window: Annotated[
        int, typer.Option(help="Readings per window of the transform.")
    ] = ScenarioConfig.window,
    holdout_from_hour: Annotated[
        int | None,
        typer.Option(help="First simulated hour of the held-out span (default: the first safe hour, >= 48)."),
    ] = None,
    holdout_hours: Annotated[int, typer.Option(help="Simulated hours in the held-out span.")] = (
        tf_scenario.DEFAULT_HOLDOUT_HOURS
    ),
    holdout_stride: Annotated[int, typer.Option(help="Every N-th window of the held-out span is scored.")] = (
        tf_scenario.DEFAULT_HOLDOUT_STRIDE
    ),
    batch_size: Annotated[int, typer.Option(min=1, max=65536, help="Training batch per step.")] = (
        ScenarioConfig.batch_size
    ),
    lr: Annotated[float, typer.Option(min=0.0, help="Adam learning rate.")] = ScenarioConfig.learning_rate,
    name: Annotated[
        str, typer.Option(help="Model name; the datasets are <name>-raw and <name>-features.")
    ] = ScenarioConfig.name,
    summary: Annotated[
        Path | None,
        typer.Option("--summary", help="Write the figures here (default <root>/scenario-<name>.json)."),
    ] = None,
    root: Annotated[
        Path, typer.Option("--root", help="Suite root: a suite running there is used, else one is started.")
    ] = DEFAULT_ROOT,
    ready_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds each service may take to be ready.")
    ] = 180.0,
    log_level: Annotated[str, typer.Option(help="Services' log level (a suite started here).")] = "info",
) -> None:
    """Predictive maintenance on a SYNTHETIC train fleet, streamed, windowed, trained
    continuously and served: each new version is scored through the gateway.

    Exits 1 if a part fails; every process it started is stopped. The summary JSON has each
    version's figures and whether the last improved on the first (ROC AUC).
    """
    started = time.monotonic()
    check_log_level(log_level)
    if not name or not name[0].isalnum() or not all(c.isalnum() or c in "._-" for c in name):
        fail(f"--name {name!r}: expected letters, digits, '.', '_', '-', starting with a letter or digit")
    try:
        cfg = ScenarioConfig(
            minutes=minutes,
            speedup=speedup,
            components=components,
            seed=seed,
            chunk_minutes=chunk_minutes,
            window=window,
            holdout_from_hour=holdout_from_hour,
            holdout_hours=holdout_hours,
            holdout_stride=holdout_stride,
            batch_size=batch_size,
            learning_rate=lr,
            name=name,
        ).check()
    except ValueError as e:
        fail(str(e))
    root = root.resolve()
    summary_path = summary or root / f"scenario-{name}.json"
    terminate_on_signals()
    report: dict[str, Any] = {
        "ok": False,
        "scenario": "train-failures",
        "synthetic": True,
        "config": cfg.to_json(),
        "load_average_start": load_average(),
    }
    console.print(
        f"[bold]train-failures[/]: a SYNTHETIC fleet of {cfg.components} components, time x{cfg.speedup:g} "
        f"(a simulated hour every {3600 / cfg.speedup:.1f}s, {cfg.bytes_per_wall_hour() / 1e6:,.0f} MB per "
        f"wall hour), for {cfg.minutes:g} minutes: up to {cfg.stream_hours():.0f} simulated hours"
    )
    held = tf_scenario.held_out(cfg)
    report["held_out"] = {
        "from_hour": held.from_hour,
        "hours": held.hours,
        "windows": len(held.labels),
        "positives": held.positives,
    }
    console.print(
        f"held out: simulated hours {held.from_hour}-{held.from_hour + held.hours} "
        f"({len(held.labels):,} windows, {held.positives:,} fail within the hour), never streamed"
    )
    error: str | None = None
    code = 0
    try:
        suite = live_suite(root)
        if suite is not None:
            if not suite.gateway_grpc or not suite.serving:
                fail(
                    f"the suite running under {root} has no gateway or serving replicas "
                    "(a training-only suite?)"
                )
            console.print(f"using the suite running under {root} (supervisor pid {suite.supervisor_pid})")
            report["suite_started"] = False
            _run(suite, cfg, held, started, report)
        else:
            _run_on_own_suite(root, cfg, held, started, ready_timeout, log_level, report)
        report["ok"] = True
    except EarlierRunError as e:
        fail(f"{e}\n(nothing was run; {summary_path} is left as it was)")
    except KeyboardInterrupt:
        error, code = "interrupted", 130
    except (ScenarioError, SupervisorError, TimeoutError) as e:
        error, code = str(e), 1
    except grpc.RpcError as e:
        error, code = f"a call failed: {rpc_error_text(e)}", 1
    report["total_seconds"] = round(time.monotonic() - started, 3)
    report["load_average_end"] = load_average()
    if error is not None:
        report["error"] = error
    atomic_write_json(summary_path, report)
    console.print(versions_table(report))
    _print_verdict(report)
    console.print(f"summary written to {summary_path}")
    if error is not None:
        err_console.print(f"[bold red]scenario failed:[/] {error}")
        raise typer.Exit(code)


def _run(
    addrs: SuiteAddresses, cfg: ScenarioConfig, held: HeldOut, started: float, report: dict[str, Any]
) -> None:
    deadline = started + cfg.minutes * 60.0
    TrainFailuresRun(addrs, cfg, held, started=started, deadline=deadline, report=report).execute()


def _run_on_own_suite(
    root: Path,
    cfg: ScenarioConfig,
    held: HeldOut,
    started: float,
    ready_timeout: float,
    log_level: str,
    report: dict[str, Any],
) -> None:
    suite_cfg = SuiteConfig(root=root, log_level=log_level, ready_timeout=ready_timeout)
    sup = make_supervisor(suite_cfg)
    try:
        with sup:
            t = time.monotonic()
            with console.status("starting the suite (each service must report SERVING)"):
                addrs = start_suite(sup, suite_cfg)
            report["suite_started"] = True
            report["startup_seconds"] = round(time.monotonic() - t, 3)
            console.print(
                f"suite up in {report['startup_seconds']:.0f}s under {root}: "
                f"gateway grpc {addrs.gateway_grpc}"
            )
            _run(addrs, cfg, held, started, report)
            console.print("stopping the suite")  # leaving the block stops every service, last started first
    finally:
        remove_suite_file(root)


def _print_verdict(report: dict[str, Any]) -> None:
    if report.get("improved") is None:
        console.print(
            f"{report.get('versions_evaluated', 0)} version(s) evaluated: too few to compare "
            "(give it more --minutes)"
        )
        return
    word = "[green]improved[/]" if report["improved"] else "[yellow]did not improve[/]"
    console.print(
        f"version {report['last_version']} vs version {report['first_version']}: {word} "
        f"(AUC {report['auc_gain']:+.3f}, recall {report['recall_gain']:+.3f}, F1 {report['f1_gain']:+.3f})"
    )
