"""Training throughput of mlmesh's parameter server against TensorFlow's ParameterServerStrategy
and against one Keras process, on a dense CNN and on a 1M-row embedding model.

    python benchmarks/ps_vs_tf.py --json benchmarks/results/ps_vs_tf.json [--quick] [--cases dense,embedding]

Two workloads, each trained asynchronously by 2 workers and 2 parameter-server shards on loopback:

- dense: the shipped `mlmesh.models.fashion_cnn` CNN (225,034 parameters) on Fashion-MNIST
  (60,000 train / 10,000 test images; quick: 6,000 / 2,000), batch 64, Adam lr 1e-3, 2 epochs
  (quick: 1);
- embedding: `benchmarks/models/zipf_embedding.py`: 8 Zipf(1.1) ids over 1,000,000 per example
  -> 1,000,000 x 32 embedding (128 MB) -> mean -> Dense(64, relu) -> Dense(1, sigmoid), binary
  cross-entropy, batch 1024, Adam lr 1e-3, 1 epoch of 2^19 examples (quick: 2^16), 16,384 test
  examples (quick: 4,096).

Systems (each run builds a fresh model):

- mlmesh: a real cluster (`_mlmesh.py`): ingest_svc, 2 paramserver_svc shards, the trainer
  coordinator and 2 trainer workers, started fresh for every run; data ingested with the CLI's
  code, the job sent to the coordinator. The embedding table is a `sparse_variables` table:
  row-sharded, only touched rows pulled and pushed, lazy Adam on the shards.
- PSS: tf_keras under `tf.distribute.experimental.ParameterServerStrategy`, 2 ps + 2 worker
  `tf.distribute.Server` processes and a chief (`_pss.py`), `MinSizePartitioner` (256 KiB, 2
  shards), the tutorial's `ClusterCoordinator.schedule` loop with 1 and with 10 steps per
  scheduled function; the better one is the headline baseline. Embedding: stock tf_keras Adam
  (every row and slot of the table updated each step, TensorFlow's Adam semantics) and, as an
  extra row, a lazy Adam (`_pss.lazy_adam`) with mlmesh's update semantics.
- 1 process: Keras 3 `model.fit` of the same Keras 3 model mlmesh trains, Adam lr 1e-3.

Rates count only the training phase, the same way on every side: the first 5% of steps
(model build, tracing, first reads) are not timed. Every system trains the same number of
examples, is evaluated on the same test set, and must learn (accuracy well above chance).
Systems are interleaved within each repetition (order rotated); figures are medians.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    LOOPBACK,
    Case,
    Child,
    Children,
    CpuSampler,
    base_parser,
    free_port,
    install_signal_handlers,
    machine_line,
    median,
    print_table,
    role_argv,
    scratch_dir,
    serve_commands,
    wait_for_quiet,
    write_json,
)
from _mlmesh import MlmeshCluster
from _pss import NUM_PS, NUM_WORKERS, WORKLOADS, Floor, PeerCoordinator, Workload, role_tf_server

BENCHMARK = "ps_vs_tf"
SCRIPT = "ps_vs_tf.py"
CALL_TIMEOUT = 3600.0
WARMUP_FRACTION = 0.05


# --- the two workloads: sizes, data, the mlmesh job, systems --------------------------------------


class Scenario:
    """One workload as the driver runs it."""

    def __init__(self, name: str, quick: bool, epochs: int) -> None:
        self.name = name
        self.w: Workload = WORKLOADS["cnn" if name == "dense" else "embedding"]
        self.epochs = epochs or (1 if quick or name == "embedding" else 2)
        if name == "dense":
            from mlmesh.data import load_fashion_mnist

            self.train = load_fashion_mnist("train", 6_000 if quick else None)
            self.test = load_fashion_mnist("test", 2_000 if quick else None)
            self.model = "mlmesh.models.fashion_cnn:build"
            self.features = ("image", "label")
            self.chance = 0.1
            self.systems = ["mlmesh", "pss1", "pss10", "floor"]
            self.model_text = "fashion_cnn: conv 32, conv 64, dense 128, softmax 10 (225,034 parameters)"
        else:
            from benchmarks.models import zipf_embedding

            self.train = zipf_embedding.make_examples(1 << (16 if quick else 19), seed=1)
            self.test = zipf_embedding.make_examples(4_096 if quick else 16_384, seed=2)
            self.model = "benchmarks.models.zipf_embedding:build"
            self.features = (zipf_embedding.FEATURE, zipf_embedding.LABEL)
            self.chance = 0.5
            self.systems = ["mlmesh", "pss1", "pss10", "pss_lazy", "floor"]
            z = zipf_embedding
            self.model_text = (
                f"zipf_embedding: {z.IDS_PER_EXAMPLE} Zipf({z.ZIPF_S}) ids of {z.NUM_IDS:,} -> "
                f"{z.NUM_IDS:,}x{z.EMBED_DIM} table -> mean -> Dense({z.HIDDEN}, relu) -> Dense(1, sigmoid)"
            )
        self.n_train = len(self.train[1])
        self.steps = math.ceil(self.epochs * self.n_train / self.w.batch)
        self.warmup_steps = max(2 * NUM_WORKERS, round(WARMUP_FRACTION * self.steps))

    def write_files(self, data_dir: Path) -> None:
        """The PSS workers read raw records; the chief and the floor read the test set as .npy."""
        data_dir.mkdir(parents=True, exist_ok=True)
        x, y = self.train
        np.ascontiguousarray(x, dtype=self.w.x_dtype).tofile(data_dir / "train-x.raw")
        np.ascontiguousarray(y, dtype=self.w.y_dtype).tofile(data_dir / "train-y.raw")
        np.save(
            data_dir / "test-x.npy", self.test[0].astype(np.float32 if self.name == "dense" else np.int64)
        )
        np.save(data_dir / "test-y.npy", self.test[1])

    def job(self) -> dict[str, Any]:
        """`mlmesh.clients.job_spec` arguments."""
        return {
            "model": self.model,
            "train_dataset": f"{self.name}-train",
            "eval_dataset": f"{self.name}-test",
            "epochs": self.epochs,
            "batch_size": self.w.batch,
            "optimizer": "adam",
            "learning_rate": self.w.lr,
            "model_name": self.name,
        }


# --- running one system once ------------------------------------------------------------------


def run_mlmesh(kids: Children, run: Path, case: Scenario, tag: str, cpu: CpuSampler) -> dict[str, Any]:
    root = run / f"mlmesh-{case.name}-{tag}"
    cluster = MlmeshCluster(kids, root, shards=NUM_PS, workers=NUM_WORKERS)
    try:
        cluster.start()
        for name, pid in cluster.processes().items():
            cpu.watch(name, pid)
        fx, fy = case.features
        cluster.ingest_arrays(f"{case.name}-train", {fx: case.train[0], fy: case.train[1]}, partitions=16)
        cluster.ingest_arrays(f"{case.name}-test", {fx: case.test[0], fy: case.test[1]}, partitions=2)
        job = cluster.train(case.job(), case.warmup_steps * case.w.batch, CALL_TIMEOUT)
    finally:
        cluster.stop()
        for name in cluster.processes():
            cpu.unwatch(name)
    expected = case.epochs * case.n_train
    if job.examples != expected:
        raise RuntimeError(f"mlmesh trained {job.examples} examples, expected {expected}")
    return {
        "examples": job.examples,
        "timed_examples": job.window_examples,
        "seconds": job.window_seconds,
        "window": list(job.window),
        "phases": job.phases,
        "train_loss": job.train_loss,
        "eval_loss": job.eval_metrics.get("loss", float("nan")),
        "accuracy": job.eval_metrics.get("accuracy", float("nan")),
        "steps": job.steps,
        "job_rate": job.examples / job.job_seconds if job.job_seconds else float("nan"),
    }


def run_system(
    system: str,
    case: Scenario,
    kids: Children,
    run: Path,
    peer: Child,
    floor: Child,
    tag: str,
    cpu: CpuSampler,
) -> dict[str, Any]:
    """One training run of `system`; its figures, plus the CPU seconds each process group spent
    inside the timed window."""
    out = _run_system(system, case, kids, run, peer, floor, tag, cpu)
    groups: dict[str, float] = {}
    for name, seconds in cpu.between(*out["window"]).items():
        group = CPU_GROUPS.get(name.split("-")[0] if not name.startswith("tf-") else name[:5], name)
        groups[group] = groups.get(group, 0.0) + seconds
    out["cpu"] = groups
    return out


# Process name (prefix) -> what it is, for the CPU breakdown.
CPU_GROUPS = {
    "worker": "workers", "tf-wo": "workers", "ps": "shards", "tf-ps": "shards",
    "ingest": "other", "coordinator": "other", "pss": "other", "floor": "process", "driver": "driver",
}  # fmt: skip


def _run_system(
    system: str,
    case: Scenario,
    kids: Children,
    run: Path,
    peer: Child,
    floor: Child,
    tag: str,
    cpu: CpuSampler,
) -> dict[str, Any]:
    data_dir = run / case.name
    if system == "mlmesh":
        return run_mlmesh(kids, run, case, tag, cpu)
    if system == "floor":
        msg = {"cmd": "run", "workload": case.w.name, "data_dir": str(data_dir), "epochs": case.epochs}
        return floor.call({**msg, "warmup_steps": case.warmup_steps}, CALL_TIMEOUT)
    k = 10 if system == "pss_lazy" else int(system.removeprefix("pss"))
    msg = {
        "cmd": "run",
        "workload": case.w.name,
        "data_dir": str(data_dir),
        "n_train": case.n_train,
        "steps": case.steps,
        "warmup_steps": case.warmup_steps,
        "steps_per_call": k,
        "optimizer": "lazy_adam" if system == "pss_lazy" else "adam",
    }
    return peer.call(msg, CALL_TIMEOUT)


# --- roles --------------------------------------------------------------------------------------


def role_peer(args: argparse.Namespace) -> None:
    peer = PeerCoordinator(json.loads(args.cluster))
    serve_commands(peer.run)


def role_floor(args: argparse.Namespace) -> None:
    floor = Floor()
    serve_commands(floor.run)


def start_peer(kids: Children, run: Path) -> Child:
    """2 ps + 2 worker tf.distribute.Server processes and the chief process."""
    cluster = {
        "chief": [f"{LOOPBACK}:{free_port()}"],
        "ps": [f"{LOOPBACK}:{free_port()}" for _ in range(NUM_PS)],
        "worker": [f"{LOOPBACK}:{free_port()}" for _ in range(NUM_WORKERS)],
    }
    servers = []
    for job, count in (("ps", NUM_PS), ("worker", NUM_WORKERS)):
        for i in range(count):
            port_file = run / f"tf-{job}{i}.json"
            argv = role_argv(
                SCRIPT, "tf-server", "--job", job, "--index", str(i),
                "--cluster", json.dumps(cluster), "--port-file", str(port_file),
            )  # fmt: skip
            servers.append(kids.start(f"tf-{job}-{i}", argv, port_file=port_file, wait=None))
    for s in servers:
        s.wait_port_file(180)
    return kids.start("pss-chief", role_argv(SCRIPT, "peer", "--cluster", json.dumps(cluster)), protocol=True)


def describe_cpu(out: dict[str, Any]) -> str:
    """Core-seconds per 10k timed examples by process group, and cores busy in the window."""
    per = {g: 1e4 * c / out["timed_examples"] for g, c in sorted(out["cpu"].items())}
    per = {g: v for g, v in per.items() if v >= 0.005}  # idle processes of the other systems
    busy = sum(out["cpu"].values()) / out["seconds"]
    text = "CPU s/10k examples: " + ", ".join(f"{g} {v:.2f}" for g, v in per.items())
    text += f"; {busy:.2f} cores busy"
    if "phases" in out:
        text += "; worker wait/step ms: " + ", ".join(f"{p} {1e3 * v:.1f}" for p, v in out["phases"].items())
        text += f"; job average incl. start-up {out['job_rate']:,.0f}/s"
    return text


# --- the table ----------------------------------------------------------------------------------

NAMES = {
    "pss1": "TF PSS + tf_keras, 1 step/function",
    "pss10": "TF PSS + tf_keras, 10 steps/function",
    "pss_lazy": "TF PSS + tf_keras, lazy Adam, 10 steps/function",
    "floor": "Keras 3 model.fit, 1 process",
}


def cases_of(case: Scenario, results: dict[str, list[dict[str, Any]]]) -> list[Case]:
    rate = {s: median([r["timed_examples"] / r["seconds"] for r in rs]) for s, rs in results.items()}
    acc = {s: median([r["accuracy"] for r in rs]) for s, rs in results.items()}
    spread = {
        s: "-".join(f"{f(r['timed_examples'] / r['seconds'] for r in rs):,.0f}" for f in (min, max))
        for s, rs in results.items()
    }
    best = max(("pss1", "pss10"), key=lambda s: rate[s])
    other = "pss10" if best == "pss1" else "pss1"
    n = case.name
    headline = f"{n}_2w2s"
    rows = [
        Case(headline, "examples/s", rate["mlmesh"], f"{NAMES[best]} (best of 1, 10)", rate[best]),
        Case(
            f"{n}_2w2s vs PSS {other.removeprefix('pss')} step(s)/fn",
            "examples/s",
            rate["mlmesh"],
            NAMES[other],
            rate[other],
        ),
    ]
    if "pss_lazy" in results:
        rows.append(
            Case(
                f"{n}_2w2s vs PSS lazy Adam",
                "examples/s",
                rate["mlmesh"],
                NAMES["pss_lazy"],
                rate["pss_lazy"],
            )
        )
    floor_name = "embedding_vs_single_keras" if n == "embedding" else f"{n} vs 1 process"
    rows.append(Case(floor_name, "examples/s", rate["mlmesh"], NAMES["floor"], rate["floor"]))
    short = {best: "PSS", "pss_lazy": "PSS lazy Adam", "floor": "1 process"}
    for s, label in short.items():
        if s in results:
            rows.append(Case(f"{n} test accuracy vs {label}", "accuracy", acc["mlmesh"], NAMES[s], acc[s]))
    for row in rows:
        if row.unit == "examples/s":
            s = next(k for k, v in NAMES.items() if v == row.baseline_name.removesuffix(" (best of 1, 10)"))
            row.note = f"per-repetition examples/s: mlmesh {spread['mlmesh']}, baseline {spread[s]}"
    return rows


def check_learnt(case: Scenario, results: dict[str, list[dict[str, Any]]]) -> None:
    """A system that did not learn measured a broken run: fail rather than print its rate."""
    floor = case.chance + (0.4 if case.name == "dense" else 0.15)
    for system, runs in results.items():
        for r in runs:
            if not r["accuracy"] > floor:
                raise RuntimeError(
                    f"{case.name}: {system} reached test accuracy {r['accuracy']:.3f} <= {floor}"
                )


# --- the driver ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--cases", default="dense,embedding", help="Comma-separated: dense, embedding.")
    p.add_argument("--epochs", type=int, default=0, help="Epochs (0: dense 2, embedding 1; quick 1).")
    p.add_argument(
        "--systems",
        default="",
        help="Only these systems (comma-separated: mlmesh, pss1, pss10, pss_lazy, floor); "
        "for exploring - the table needs them all.",
    )
    for hidden in ("--cluster", "--job", "--port-file"):
        p.add_argument(hidden, default="", help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    roles: dict[str, Callable[[argparse.Namespace], None]] = {
        "tf-server": role_tf_server, "peer": role_peer, "floor": role_floor,
    }  # fmt: skip
    if args.role:
        roles[args.role](args)
        return 0

    install_signal_handlers()
    reps = args.reps or (1 if args.quick else 3)
    wait_for_quiet(args)
    cases = [Scenario(name, args.quick, args.epochs) for name in args.cases.split(",")]
    rows: list[Case] = []
    loads = [os.getloadavg()[0]]
    cpu = CpuSampler()
    cpu.watch("driver", os.getpid())
    cpu.start()
    with scratch_dir(args, BENCHMARK) as run, Children(run) as kids:
        for case in cases:
            case.write_files(run / case.name)
        peer = start_peer(kids, run)
        floor = kids.start("floor", role_argv(SCRIPT, "floor"), protocol=True)
        for child in kids.children:
            cpu.watch(child.name, child.proc.pid)
        peer.recv(300)
        floor.recv(300)
        began = time.monotonic()
        for case in cases:
            print(
                f"{case.name}: {case.model_text}\n  {case.n_train:,} train / {len(case.test[1]):,} test "
                f"examples, batch {case.w.batch}, Adam(lr {case.w.lr}, beta 0.9/0.999, eps 1e-7) on every "
                f"side, {case.epochs} epoch(s) = {case.steps:,} steps, first {case.warmup_steps} untimed; "
                f"{NUM_WORKERS} workers x {NUM_PS} ps (PSS: MinSizePartitioner 256 KiB, at most {NUM_PS} "
                f"shards); {reps} repetition(s)",
                flush=True,
            )
            if args.systems:
                case.systems = [s for s in case.systems if s in args.systems.split(",")]
            results: dict[str, list[dict[str, Any]]] = {s: [] for s in case.systems}
            for rep in range(reps):
                order = case.systems[rep % len(case.systems) :] + case.systems[: rep % len(case.systems)]
                for system in order:
                    loads.append(os.getloadavg()[0])
                    out = run_system(system, case, kids, run, peer, floor, str(rep), cpu)
                    results[system].append(out)
                    print(
                        f"  rep {rep + 1}: {system:8s} {out['timed_examples']:>8,} timed examples in "
                        f"{out['seconds']:6.1f}s = {out['timed_examples'] / out['seconds']:8,.0f}/s; "
                        f"train loss {out['train_loss']:.3f}, test loss {out['eval_loss']:.3f}, "
                        f"accuracy {out['accuracy']:.4f}\n           {describe_cpu(out)}",
                        flush=True,
                    )
                loads.append(os.getloadavg()[0])
            check_learnt(case, results)
            if args.systems:
                continue
            params = {results["pss1"][0]["params"], results["floor"][0]["params"]}
            if len(params) != 1:
                raise RuntimeError(f"{case.name}: the tf_keras and Keras 3 models differ in size: {params}")
            print(
                f"  PSS placement (variable: tasks): {', '.join(results['pss1'][0]['placement'])}", flush=True
            )
            rows += cases_of(case, results)
        print(f"elapsed in runs: {time.monotonic() - began:.0f}s")
    cpu.stop()

    print_table(BENCHMARK, rows)
    print(
        f"machine: {machine_line()}; load average seen {min(loads):.2f}-{max(loads):.2f}; "
        f"medians of {reps} repetition(s)"
    )
    write_json(args.json, BENCHMARK, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
