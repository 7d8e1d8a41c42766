"""`mlmesh scenario`: runnable scenarios, end to end on the local suite.

`mlmesh scenario train-failures` (logic in `mlmesh.scenarios`): a SYNTHETIC fleet streamed
into ingest, a partition per chunk → a windowing transform job (`mlmesh transform run
--follow`, a child process) → a continuous training job of failure_mlp, a version per epoch
→ each version, once every serving replica has it AVAILABLE, scored THROUGH THE GATEWAY
(gRPC Predict via Envoy) on a held-out later span of the fleet → a table per version and a
summary JSON. Bounded by --minutes of wall time; stops everything it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import grpc
import numpy as np
import typer
from rich import box
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mlmesh import tensor
from mlmesh.cli.common import DEFAULT_ROOT, SuiteAddresses, console, err_console, fail
from mlmesh.cli.demo import replica_version_states
from mlmesh.cli.suite import SuiteConfig, make_supervisor, start_suite
from mlmesh.cli.train import (
    CREATE_JOB_TIMEOUT_SECONDS,
    UNAVAILABLE_PATIENCE_SECONDS,
    live_suite,
    load_average,
)
from mlmesh.cli.up import check_log_level, remove_suite_file
from mlmesh.clients import (
    IngestClient,
    ServingClient,
    TrainerClient,
    first_output,
    job_spec,
    job_state_name,
    rpc_error_text,
    version_state_name,
)
from mlmesh.data.train_failures import FleetSimulator
from mlmesh.files import atomic_write_json
from mlmesh.ingest.v1 import ingest_pb2
from mlmesh.lifeline import PARENT_PID_ENV
from mlmesh.scenarios import train_failures as tf_scenario
from mlmesh.scenarios.metrics import binary_metrics
from mlmesh.scenarios.stream import FleetStreamer, partition_bytes_for_chunk, raw_schema
from mlmesh.scenarios.train_failures import HeldOut, ScenarioConfig, VersionResult, improvement
from mlmesh.serving.v1 import serving_pb2
from mlmesh.supervisor import SupervisorError, terminate_on_signals
from mlmesh.trainer.v1 import trainer_pb2

app = typer.Typer(help="Run a scenario end to end on the local suite.", no_args_is_help=True)

TICK_SECONDS = 0.25  # a version may be served for only a second or two early on
PREDICT_BATCH = 1024  # serving's default max_request_examples
STATUS_LINE_SECONDS = 20.0  # without a terminal: a progress line this often
TRANSFORM_STOP_SECONDS = 40.0
MAX_EPOCHS = 1000  # the coordinator's bound; the run ends long before
RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class ScenarioError(RuntimeError):
    """A part of the scenario failed; the message says which and why."""


class EarlierRunError(ScenarioError):
    """The suite holds an earlier run's data under the same --name: nothing was done."""


class TrainFailuresRun:
    """One run against a running suite: stream, transform, train, evaluate until `deadline`.

    `execute()` always stops what it started (the streamer, the transform job's process, the
    training job) and leaves its figures in `report`.
    """

    def __init__(
        self,
        addrs: SuiteAddresses,
        cfg: ScenarioConfig,
        held: HeldOut,
        *,
        started: float,
        deadline: float,
        report: dict[str, Any],
    ) -> None:
        self.addrs = addrs
        self.cfg = cfg
        self.held = held
        self.started = started
        self.deadline = deadline
        self.report = report
        self.stop = threading.Event()
        self.streamer: FleetStreamer | None = None
        self.transform: subprocess.Popen[bytes] | None = None
        self.job_id = ""
        self.job: trainer_pb2.JobStatus | None = None
        self.results: list[VersionResult] = []
        self.pending: list[VersionResult] = []  # exported, not yet evaluated or skipped
        self.features_records = 0
        self.features_partitions = 0
        self.load_max = 0.0
        self.note = ""  # shown in the progress display
        # The held-out span as request inputs, encoded once for every version.
        self.held_requests = [
            tensor.map_to_proto({"features": held.features[i : i + PREDICT_BATCH]})
            for i in range(0, len(held.features), PREDICT_BATCH)
        ]
        self.log_dir = addrs.root / "run" / "logs"

    # -- the run -----------------------------------------------------------------------

    def execute(self) -> None:
        self.ingest = IngestClient(self.addrs.ingest)
        self.trainer = TrainerClient(self.addrs.coordinator)
        try:
            self._prepare()
            self._prime_stream()
            self._start_transform()
            with self._display() as show:
                failing_since: float | None = None
                while time.monotonic() < self.deadline:
                    try:
                        self._tick()
                        failing_since = None
                    except grpc.RpcError as e:
                        # A service the supervisor restarts comes back on its port: wait a while.
                        failing_since = failing_since or time.monotonic()
                        waited = time.monotonic() - failing_since
                        if e.code() not in RETRIED or waited > UNAVAILABLE_PATIENCE_SECONDS:  # type: ignore[attr-defined]
                            raise
                        self.note = f"retrying: {rpc_error_text(e)}"
                    show()
                    time.sleep(TICK_SECONDS)
        finally:
            self._shutdown()
            self.ingest.close()
            self.trainer.close()

    def _prepare(self) -> None:
        """Refuse to mix with an earlier run's data; create the raw dataset."""
        cfg = self.cfg
        for name in (cfg.raw_dataset, cfg.features_dataset):
            ds = self.ingest.get_dataset(name)
            if ds is not None and ds.num_records > 0:
                raise EarlierRunError(
                    f"dataset {name!r} already holds {ds.num_records:,} records (an earlier run under "
                    f"{self.addrs.root}?): pass another --name or a fresh --root"
                )
        self.ingest.create_dataset(
            cfg.raw_dataset, raw_schema(), partition_bytes_for_chunk(cfg.components, cfg.chunk_minutes)
        )
        for addr, versions in replica_version_states(self.addrs.serving, cfg.name).items():
            if not isinstance(versions, str) and versions:
                raise EarlierRunError(
                    f"replica {addr} already serves model {cfg.name!r} (versions "
                    f"{sorted(v.version for v in versions)}): pass another --name or a fresh --root"
                )

    def _prime_stream(self) -> None:
        """The first chunk, at once: the transform and the job start on it. The stream's clock
        starts when the job runs (`_tick`), so the versions' figures do not depend on how long
        the machine took to start the trainer: version 1 has seen about one chunk."""
        cfg = self.cfg
        self.streamer = FleetStreamer(
            self.addrs.ingest,
            cfg.raw_dataset,
            FleetSimulator(cfg.components, seed=cfg.seed),
            chunk_minutes=cfg.chunk_minutes,
            simulated_minutes_per_second=cfg.simulated_minutes_per_second,
            stop=self.stop,
        )
        self.streamer.append_next()

    def _start_transform(self) -> None:
        """`mlmesh transform run --follow` as a child: the same command a user would run."""
        cfg = self.cfg
        argv = [
            sys.executable, "-m", "mlmesh.cli.main", "transform", "run",
            "--source", cfg.raw_dataset, "--target", cfg.features_dataset,
            "--transform", tf_scenario.TRANSFORM, "--arg", f"window={cfg.window}",
            "--workers", "1", "--follow", "--poll-seconds", "1", "--ingest-addr", self.addrs.ingest,
            "--root", str(self.addrs.root),
        ]  # fmt: skip
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"scenario-{cfg.name}-transform.log"
        self.report["transform_log"] = str(log_path)
        # Dies with this process even if it is SIGKILLed (mlmesh.lifeline).
        env = {**os.environ, PARENT_PID_ENV: str(os.getpid()), "COLUMNS": "100"}
        with open(log_path, "ab") as log:
            self.transform = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, process_group=0
            )

    def _tick(self) -> None:
        assert self.streamer is not None and self.transform is not None
        if self.streamer.error is not None:
            e = self.streamer.error
            text = rpc_error_text(e) if isinstance(e, grpc.RpcError) else f"{type(e).__name__}: {e}"
            raise ScenarioError(f"streaming readings into {self.cfg.raw_dataset!r} failed: {text}")
        if self.transform.poll() is not None:
            raise ScenarioError(
                f"the transform job exited with code {self.transform.returncode}; "
                f"see {self.report['transform_log']}"
            )
        self.load_max = max(self.load_max, os.getloadavg()[0])
        self.note = ""
        parts = self._feature_partitions()
        self.features_partitions = len(parts)
        self.features_records = sum(p.num_records for p in parts)
        if not self.job_id:
            if parts:  # a continuous job needs data to enqueue its first epoch over
                self._create_job()
            return
        self._poll_job(parts)
        if (
            not self.streamer.ident
            and self.job is not None
            and self.job.state != trainer_pb2.JOB_STATE_PENDING
        ):
            self.streamer.start()  # the job runs: the stream's clock starts now
            self.report["stream_clock_started_after_s"] = round(time.monotonic() - self.started, 3)
        self._evaluate_served()

    def _feature_partitions(self) -> list[ingest_pb2.Partition]:
        ingest = self.ingest
        if ingest.get_dataset(self.cfg.features_dataset) is None:  # the transform creates it
            return []
        req = ingest_pb2.ListPartitionsRequest(dataset=self.cfg.features_dataset)
        parts = ingest.stub.ListPartitions(req, timeout=ingest.timeout).partitions
        return sorted(parts, key=lambda p: p.partition_id)

    def _create_job(self) -> None:
        cfg = self.cfg
        spec = job_spec(
            model=tf_scenario.MODEL,
            model_args={"window": str(cfg.window)},
            train_dataset=cfg.features_dataset,
            epochs=MAX_EPOCHS,
            batch_size=cfg.batch_size,
            optimizer="adam",
            learning_rate=cfg.learning_rate,
            model_name=cfg.name,
            seed=cfg.seed,
            continuous=True,
        )
        with TrainerClient(self.addrs.coordinator, timeout=CREATE_JOB_TIMEOUT_SECONDS) as client:
            self.job = client.create_job(spec)
        self.job_id = self.job.job_id
        self.report["job_id"] = self.job_id
        self.report["job_created_after_s"] = round(time.monotonic() - self.started, 3)
        console.print(
            f"job {self.job_id}: continuous training of failure_mlp on {cfg.features_dataset!r} "
            f"(batch {cfg.batch_size}, adam lr {cfg.learning_rate:g}), a version per epoch"
        )

    def _poll_job(self, parts: list[ingest_pb2.Partition]) -> None:
        job = self.trainer.get_job(self.job_id)
        self.job = job
        if job.state in (trainer_pb2.JOB_STATE_FAILED, trainer_pb2.JOB_STATE_CANCELLED):
            raise ScenarioError(f"job {self.job_id} ended {job_state_name(job.state)}: {job.error or '-'}")
        known = max((r.version for r in (*self.results, *self.pending)), default=0)
        if job.model_version <= known:
            return
        # The version was snapshotted after `epochs_exported` epochs; each epoch covered every
        # partition present when it was enqueued, so the last of them covered the first N by id.
        epochs = int(job.epochs_exported)
        queue = self.ingest.stub.GetQueueStatus(
            ingest_pb2.GetQueueStatusRequest(job_id=self.job_id), timeout=self.ingest.timeout
        ).status
        covered = int(queue.epochs[epochs - 1].total) if 0 < epochs <= len(queue.epochs) else 0
        records = sum(p.num_records for p in parts[:covered])
        self.pending.append(
            VersionResult(
                version=int(job.model_version),
                epochs=epochs,
                partitions=covered,
                records=records,
                simulated_hours=tf_scenario.simulated_hours(records, self.cfg),
                examples_trained=int(job.examples),
                exported_after_s=time.monotonic() - self.started,
                served_after_s=0.0,
            )
        )

    def _evaluate_served(self) -> None:
        if not self.pending:
            return
        states: dict[str, dict[int, str] | str] = {}
        for addr, versions in replica_version_states(self.addrs.serving, self.cfg.name).items():
            states[addr] = (
                versions
                if isinstance(versions, str)
                else {v.version: version_state_name(v.state) for v in versions}
            )
        for result in list(self.pending):
            verdict = tf_scenario.serving_verdict(states, result.version)
            if verdict == tf_scenario.WAITING:
                continue
            self.pending.remove(result)
            if verdict == tf_scenario.READY:
                result.served_after_s = time.monotonic() - self.started
                self._evaluate(result)
            else:
                result.skipped = (
                    "a replica failed to load it"
                    if verdict == tf_scenario.FAILED
                    else "superseded before it was served"
                )
            self.results.append(result)
            console.print(version_line(result))

    def _evaluate(self, result: VersionResult) -> None:
        """Score `result.version` on the held-out span through the gateway (gRPC, via Envoy).

        Every request is in flight at once: a replica drops a version soon after it loads the
        next one, and the first versions come a second or two apart."""
        t = time.perf_counter()
        scores = []
        try:
            with ServingClient(self.addrs.gateway_grpc, timeout=30.0) as client:
                futures = [
                    client.stub.Predict.future(
                        serving_pb2.PredictRequest(
                            model_name=self.cfg.name, version=result.version, inputs=inputs
                        ),
                        timeout=30.0,
                    )
                    for inputs in self.held_requests
                ]
                for future in futures:
                    resp = future.result()
                    if resp.version != result.version:
                        raise ScenarioError(
                            f"asked for version {result.version}, version {resp.version} answered"
                        )
                    scores.append(first_output(tensor.map_from_proto(resp.outputs)).reshape(-1))
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                result.skipped = "superseded while it was evaluated"
                return
            raise
        result.eval_seconds = time.perf_counter() - t
        result.metrics = binary_metrics(self.held.labels, np.concatenate(scores), self.cfg.threshold)

    def _shutdown(self) -> None:
        self.stop.set()
        if self.job_id:
            try:
                with TrainerClient(self.addrs.coordinator, timeout=10.0) as client:
                    job = client.get_job(self.job_id)
                    self.job = job
                    if job.state not in (
                        trainer_pb2.JOB_STATE_SUCCEEDED,
                        trainer_pb2.JOB_STATE_FAILED,
                        trainer_pb2.JOB_STATE_CANCELLED,
                    ):
                        self.job = client.cancel_job(self.job_id)
            except grpc.RpcError as e:
                err_console.print(f"could not cancel job {self.job_id}: {rpc_error_text(e)}")
        if self.transform is not None and self.transform.poll() is None:
            self.transform.send_signal(signal.SIGINT)  # the driver stops its workers on Ctrl-C
            try:
                self.transform.wait(TRANSFORM_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.transform.kill()
                self.transform.wait(10)
        if self.streamer is not None and self.streamer.ident:
            self.streamer.join(timeout=70.0)  # at most one Append in flight
        self._fill_report()

    def _fill_report(self) -> None:
        stream = self.streamer.stats() if self.streamer is not None else None
        r = self.report
        if stream is not None:
            r["stream"] = {
                "chunks": stream.chunks,
                "records": stream.records,
                "bytes": stream.bytes,
                "simulated_hours": round(stream.simulated_hours, 3),
                "max_lag_seconds": round(stream.max_lag_seconds, 3),
            }
        r["features"] = {"records": self.features_records, "partitions": self.features_partitions}
        if self.job is not None:
            r["job"] = {
                "job_id": self.job.job_id,
                "state": job_state_name(self.job.state),
                "steps": int(self.job.steps),
                "examples": int(self.job.examples),
                "epochs_completed": int(self.job.epochs_completed),
                "model_version": int(self.job.model_version),
            }
        r["versions"] = [v.to_json() for v in self.results]
        r["versions_not_evaluated_at_stop"] = [v.version for v in self.pending]
        r.update(improvement(self.results))
        r["load_average_max_1m"] = round(self.load_max, 2)

    # -- display -----------------------------------------------------------------------

    def _status(self) -> Group:
        now = time.monotonic()
        elapsed, total = now - self.started, self.deadline - self.started
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        lines = [f"[bold]{_mmss(elapsed)}[/] of {_mmss(total)}   load {load}"]
        if self.streamer is not None:
            s = self.streamer.stats()
            lag = f", {s.lag_seconds:.1f}s behind" if s.lag_seconds > 1 else ""
            lines.append(
                f"stream    {s.simulated_hours:6.1f} simulated h  {s.records:>11,} readings  "
                f"{s.chunks:>4} partitions{lag}"
            )
        lines.append(
            f"features  {self.features_records:>11,} windows  {self.features_partitions:>4} partitions"
        )
        if self.job is None:
            lines.append("training  waits for the first windows")
        else:
            j = self.job
            lines.append(
                f"training  {job_state_name(j.state)} epoch {j.epochs_completed + 1}  step {j.steps:,}  "
                f"loss {j.loss:.3f}  {j.examples_per_second:,.0f} ex/s  version {j.model_version or '-'}"
            )
        scored = [r for r in self.results if r.metrics is not None]
        waiting = ", ".join(str(r.version) for r in self.pending) or "-"
        lines.append(f"serving   {len(scored)} versions evaluated through the gateway; loading: {waiting}")
        if self.note:
            lines.append(f"[yellow]{self.note}[/]")
        return Group(*(Text.from_markup(line) for line in lines))

    def _display(self) -> _Display:
        return _Display(self)


class _Display:
    """A live panel on a terminal; otherwise a status line every STATUS_LINE_SECONDS."""

    def __init__(self, run: TrainFailuresRun) -> None:
        self.run = run
        self.live: Live | None = None
        self.last = 0.0

    def __enter__(self) -> Any:
        if console.is_terminal:
            self.live = Live(self.run._status(), console=console, refresh_per_second=2, transient=True)
            self.live.__enter__()
        return self.show

    def show(self) -> None:
        if self.live is not None:
            self.live.update(self.run._status())
        elif time.monotonic() - self.last >= STATUS_LINE_SECONDS:
            self.last = time.monotonic()
            for line in self.run._status().renderables:
                console.print(line)

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)


def _mmss(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def version_line(r: VersionResult) -> str:
    head = f"v{r.version}  epochs {r.epochs}  {r.simulated_hours:.1f} sim h  {r.records:,} windows"
    if r.metrics is None:
        return f"{head}  not evaluated: {r.skipped}"
    m = r.metrics
    return f"{head}  precision {m.precision:.3f}  recall {m.recall:.3f}  AUC {m.auc:.3f}"


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
            _mmss(v["served_after_s"]),
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
