"""The mlmesh side of the training benchmarks: a real training cluster, fed and driven through
mlmesh's public entry points only.

- Processes: `python -m ingest_svc`, `python -m paramserver_svc` x shards, `python -m trainer_svc
  coordinator` and `python -m trainer_svc worker` x workers, on loopback with ephemeral ports
  (no serving replicas, no gateway: nothing a training job needs).
- Data goes in with the CLI's own `mlmesh.cli.ingest.ingest_arrays`; a job is a
  `mlmesh.clients.job_spec` sent to the coordinator with `TrainerClient.create_job`.
- The training rate is read from the workers' own Prometheus counters
  (`mlmesh_trainer_worker_examples_total`), sampled every SAMPLE_SECONDS: the window starts once
  every worker has trained and `warmup_examples` are done (model build, tracing, first partition
  reads are behind us) and ends when the last example is counted.

Everything that knows how mlmesh is started, fed and asked to train is in this file (callers
pass `job_spec` keyword arguments), so a change of the services' flags or of the job spec
(consistency modes, worker clocks, ...) is one edit here.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _common import LOOPBACK, PYTHON, Child, Children

SAMPLE_SECONDS = 0.1
EXAMPLES_METRIC = "mlmesh_trainer_worker_examples_total"
# Services' common flags (cf. _common.service_argv): quiet JSON logs, quick shutdown.
_COMMON = ["--log-format", "json", "--log-level", "warning", "--grace-seconds", "1", "--drain-seconds", "0"]
# Workers and coordinator run with their default settings (polling, reports, checkpoints
# every 60 s), as `mlmesh up` starts them.


def _argv(module: str, role: str | None, port_file: Path, *args: str) -> list[str]:
    head = [PYTHON, "-m", module, *([role] if role else [])]
    return [*head, "--host", LOOPBACK, "--port", "0", "--port-file", str(port_file), *_COMMON, *args]


@dataclass
class JobRun:
    """What one job did: the windowed rate (the figure) and the job's own account."""

    examples: int  # every example the workers trained
    window_examples: int
    window: tuple[float, float]  # perf_counter: the window's first sample, its last example (estimated)
    job_seconds: float  # the coordinator's RUNNING time (includes model build and start-up)
    steps: int
    train_loss: float  # the coordinator's moving mean over the last reports
    eval_metrics: dict[str, float] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)  # mean wait per step and phase, in the window

    @property
    def window_seconds(self) -> float:
        return self.window[1] - self.window[0]


class MlmeshCluster:
    """ingest + shards + coordinator + workers as children of `kids` (stopped with them)."""

    def __init__(
        self,
        kids: Children,
        root: Path,
        *,
        shards: int = 2,
        workers: int = 2,
        worker_args: Sequence[str] = (),
        ready_timeout: float = 180.0,
    ) -> None:
        self.kids, self.root = kids, root
        self.num_shards, self.num_workers = shards, workers
        self.worker_args = list(worker_args)
        self.ready_timeout = ready_timeout
        self.ingest: Child | None = None
        self.shards: list[Child] = []
        self.coordinator: Child | None = None
        self.workers: list[Child] = []

    def start(self) -> None:
        root, t = self.root, self.ready_timeout
        first = [
            ("ingest", _argv("ingest_svc", None, root / "ingest.port", "--data-dir", str(root / "data")))
        ]
        for i in range(self.num_shards):
            args = ["--shard-index", str(i), "--num-shards", str(self.num_shards)]
            args += ["--checkpoint-dir", str(root / f"ckpt-{i}")]
            first.append((f"ps-{i}", _argv("paramserver_svc", None, root / f"ps-{i}.port", *args)))
        started = self._start_all(first, t)
        self.ingest, self.shards = started[0], started[1:]
        coord_args = [
            "--ingest-addr", self.ingest.addr, "--ps-addrs", ",".join(s.addr for s in self.shards),
            "--model-repo", str(root / "models"), "--work-dir", str(root / "work"),
        ]  # fmt: skip
        (self.coordinator,) = self._start_all(
            [("coordinator", _argv("trainer_svc", "coordinator", root / "coordinator.port", *coord_args))], t
        )
        workers = []
        for i in range(self.num_workers):
            args = ["--coordinator-addr", self.coordinator.addr, "--worker-id", f"worker-{i}"]
            args += ["--cache-dir", str(root / f"cache-{i}"), *self.worker_args]
            workers.append((f"worker-{i}", _argv("trainer_svc", "worker", root / f"worker-{i}.port", *args)))
        self.workers = self._start_all(workers, t)

    def _start_all(self, specs: list[tuple[str, list[str]]], timeout: float) -> list[Child]:
        children = [
            self.kids.start(name, argv, port_file=Path(argv[argv.index("--port-file") + 1]), wait=None)
            for name, argv in specs
        ]
        for child in children:
            child.wait_port_file(timeout)
        return children

    def processes(self) -> dict[str, int]:
        """Name -> pid of every process of the cluster."""
        kids = [self.ingest, *self.shards, self.coordinator, *self.workers]
        return {c.name: c.proc.pid for c in kids if c is not None}

    def stop(self) -> None:
        """Workers first (they would log the coordinator's absence), then the rest."""
        for child in [*self.workers, self.coordinator, *self.shards, self.ingest]:
            if child is not None and child in self.kids.children:
                child.stop()
                self.kids.children.remove(child)

    # -- data and jobs ------------------------------------------------------------------------

    def ingest_arrays(self, dataset: str, arrays: Mapping[str, np.ndarray], partitions: int) -> int:
        """Create `dataset` and append `arrays` cut into about `partitions` partitions; the count cut."""
        from mlmesh.cli.ingest import ingest_arrays, partition_bytes_for
        from mlmesh.clients import IngestClient

        assert self.ingest is not None
        n = len(next(iter(arrays.values())))
        record_bytes = sum(a[:1].nbytes for a in arrays.values())
        with IngestClient(self.ingest.addr) as client:
            result = ingest_arrays(
                client, dataset, arrays, max_partition_bytes=partition_bytes_for(n, record_bytes, partitions)
            )
        if result.records != n:
            raise RuntimeError(f"ingest of {dataset!r} took {result.records} of {n} records")
        return result.partitions

    def train(self, spec_args: dict[str, Any], warmup_examples: int, timeout: float) -> JobRun:
        """Run one job to SUCCEEDED (training, evaluation, export) and measure its training window.

        `spec_args` are `mlmesh.clients.job_spec`'s keyword arguments.
        """
        from mlmesh.clients import TERMINAL_JOB_STATES, TrainerClient, job_spec, job_state_name
        from mlmesh.trainer.v1 import trainer_pb2

        assert self.coordinator is not None
        sampler = _Sampler([w.info["metrics_port"] for w in self.workers])
        sampler.start()
        try:
            # CreateJob builds the model in the coordinator: on 2 shared cores at load 20+ that
            # took more than the client's default 30 s.
            with TrainerClient(self.coordinator.addr, timeout=180.0) as client:
                job = client.create_job(job_spec(**spec_args))
                deadline = time.monotonic() + timeout
                while job.state not in TERMINAL_JOB_STATES:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"job {job.job_id} still {job_state_name(job.state)} after {timeout}s"
                        )
                    time.sleep(0.2)
                    job = client.get_job(job.job_id)
        finally:
            samples = sampler.stop()
        if job.state != trainer_pb2.JOB_STATE_SUCCEEDED:
            raise RuntimeError(f"job {job.job_id} ended {job_state_name(job.state)}: {job.error}")
        if len(samples) < 2:
            raise RuntimeError(f"only {len(samples)} metrics samples of the workers were taken")
        start, end, end_time = training_window(samples, warmup_examples)
        return JobRun(
            examples=int(job.examples),
            window_examples=int(sum(_examples(end, start))),
            window=(start[0], end_time),
            job_seconds=float(job.train_seconds),
            steps=int(job.steps),
            train_loss=float(job.loss),
            eval_metrics={k: float(v) for k, v in job.eval_metrics.items()},
            phases=phase_means(start, end),
        )


# --- the workers' counters ---------------------------------------------------------------------

PHASES = ("pull", "compute", "push")
_PHASE_SUM = 'mlmesh_trainer_worker_step_phase_seconds_sum{phase="%s"}'
_PHASE_COUNT = 'mlmesh_trainer_worker_step_phase_seconds_count{phase="%s"}'
_WANTED = {EXAMPLES_METRIC, *(_PHASE_SUM % p for p in PHASES), *(_PHASE_COUNT % p for p in PHASES)}

Sample = tuple[float, list[dict[str, float]]]  # (perf_counter, per worker: metric -> value)


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=5).read().decode()
    out = dict.fromkeys(_WANTED, 0.0)
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in _WANTED:
            out[name] = float(value)
    return out


class _Sampler:
    """Samples each worker's /metrics every SAMPLE_SECONDS in a thread. The counters are per
    process; only differences between samples are used."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            try:
                self.samples.append((t, [_scrape(p) for p in self.ports]))
            except OSError as e:  # a slow scrape under load: skip this sample, not the run
                print(f"  warning: metrics scrape failed: {e}", flush=True)
            self._stop.wait(max(0.0, SAMPLE_SECONDS - (time.perf_counter() - t)))

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join(10)
        return self.samples


def _examples(sample: Sample, base: Sample) -> list[float]:
    return [w[EXAMPLES_METRIC] - b[EXAMPLES_METRIC] for w, b in zip(sample[1], base[1], strict=True)]


def training_window(samples: list[Sample], warmup_examples: int) -> tuple[Sample, Sample, float]:
    """The window's first sample (every worker has trained, `warmup_examples` are done), the first
    sample showing the final count, and the estimated time of the last example: the sample
    before it plus the examples left at the window's mean rate (a sample can be up to
    SAMPLE_SECONDS late; the count at a sample is exact)."""
    base = samples[0]
    count = [sum(_examples(s, base)) for s in samples]
    final = count[-1]
    first = next(
        (i for i, s in enumerate(samples) if min(_examples(s, base)) > 0 and count[i] >= warmup_examples),
        None,
    )
    if first is None or final <= count[first]:
        raise RuntimeError(f"no training window in {len(samples)} samples (final count {final:.0f})")
    last = next(i for i in range(first, len(samples)) if count[i] >= final)
    end_time = samples[last][0]
    if last - 1 > first and count[last - 1] > count[first]:
        rate = (count[last - 1] - count[first]) / (samples[last - 1][0] - samples[first][0])
        end_time = min(end_time, samples[last - 1][0] + (final - count[last - 1]) / rate)
    return samples[first], samples[last], end_time


def phase_means(start: Sample, end: Sample) -> dict[str, float]:
    """Mean seconds per step that a worker waited on each phase within the window."""
    out = {}
    for p in PHASES:
        total = sum(e[_PHASE_SUM % p] - s[_PHASE_SUM % p] for s, e in zip(start[1], end[1], strict=True))
        steps = sum(e[_PHASE_COUNT % p] - s[_PHASE_COUNT % p] for s, e in zip(start[1], end[1], strict=True))
        out[p] = total / steps if steps else float("nan")
    return out
