"""One run of `mlmesh scenario train-failures` against a running suite: the streamer, the
transform job's process, the training job, the versions scored through the gateway, and the
progress display. `mlmesh.cli.scenario` is the command around it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import grpc
import numpy as np
from rich.console import Group
from rich.live import Live
from rich.text import Text

from mlmesh import tensor
from mlmesh.cli.common import SuiteAddresses, console, err_console
from mlmesh.cli.demo import replica_version_states
from mlmesh.cli.train import CREATE_JOB_TIMEOUT_SECONDS, UNAVAILABLE_PATIENCE_SECONDS
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
from mlmesh.ingest.v1 import ingest_pb2
from mlmesh.lifeline import PARENT_PID_ENV
from mlmesh.scenarios import train_failures as tf_scenario
from mlmesh.scenarios.metrics import binary_metrics
from mlmesh.scenarios.stream import FleetStreamer, partition_bytes_for_chunk, raw_schema
from mlmesh.scenarios.train_failures import HeldOut, ScenarioConfig, VersionResult, improvement
from mlmesh.serving.v1 import serving_pb2
from mlmesh.trainer.v1 import trainer_pb2

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
        lines = [f"[bold]{mmss(elapsed)}[/] of {mmss(total)}   load {load}"]
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


def mmss(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def version_line(r: VersionResult) -> str:
    head = f"v{r.version}  epochs {r.epochs}  {r.simulated_hours:.1f} sim h  {r.records:,} windows"
    if r.metrics is None:
        return f"{head}  not evaluated: {r.skipped}"
    m = r.metrics
    return f"{head}  precision {m.precision:.3f}  recall {m.recall:.3f}  AUC {m.auc:.3f}"
