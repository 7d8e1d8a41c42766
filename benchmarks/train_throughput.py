"""Training throughput and accuracy: the fashion CNN trained by mlmesh, by TensorFlow's
ParameterServerStrategy, and by one Keras process.

    python benchmarks/train_throughput.py --json benchmarks/results/train_throughput.json \
        [--quick] [--epochs N]

The same job everywhere: the shipped `mlmesh.models.fashion_cnn` CNN (225,034 parameters),
Fashion-MNIST from `mlmesh.data` (the first --limit-train / --limit-test images; all 60k/10k by
default, 6,000/2,000 with --quick), batch 64, Adam lr 1e-3, --epochs passes (2; 1 with --quick),
asynchronous data parallelism over 2 workers and 2 parameter-server shards, all on loopback:

- (a) mlmesh: `python -m mlmesh.cli.main demo --epochs E --batch-size 64 [--limit-*]` as a
  subprocess (ingest, 2 paramserver_svc shards, coordinator, 2 trainer workers, 2 serving
  replicas, gateway). Read from its demo-summary.json: examples / train_seconds (the job's
  RUNNING time: no start-up, ingest, evaluation or export) and the job's test accuracy.
- (b) peer: `tf.distribute.experimental.ParameterServerStrategy` with tf_keras (Keras 2; Keras 3
  fails under it): 2 ps + 2 worker `tf.distribute.Server` processes and a coordinator process,
  the tutorial's custom loop (`ClusterCoordinator.schedule` over `create_per_worker_dataset`,
  variables split by `MinSizePartitioner`), with 1 step per scheduled function (a plain loop)
  and with 10 (its best setting here). Workers read the same images from raw files the driver
  writes. Time: from creating the per-worker dataset to `join()`; test accuracy computed with
  the trained variables at the end.
- (c) floor: `model.fit` of the Keras 3 model in one process, no distribution.

Every run builds a fresh model and pays its own tracing. Systems are interleaved within each
repetition (order rotated); figures are medians. Whole run bounded by --budget seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    LOOPBACK,
    PYTHON,
    Case,
    Child,
    Children,
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

BENCHMARK = "train_throughput"
SCRIPT = "train_throughput.py"
BATCH = 64
LR = 1e-3
NUM_WORKERS = 2
NUM_PS = 2
QUICK_TRAIN, QUICK_TEST = 6_000, 2_000
CALL_TIMEOUT = 1800.0
SYSTEMS = ("mlmesh", "peer1", "peer10", "floor")
IMAGES_FILE, LABELS_FILE = "train-images.u8", "train-labels.u8"


# --- the model and data, shared by the role processes --------------------------------------


def load(split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    from mlmesh.data import load_fashion_mnist

    return load_fashion_mnist(split, limit)  # type: ignore[arg-type]


def build_tf_keras(tk: Any) -> Any:
    """`mlmesh.models.fashion_cnn.build()` layer for layer, in tf_keras (Keras 2)."""
    from mlmesh.models import fashion_cnn

    cfg = fashion_cnn.DEFAULTS
    L = tk.layers
    inputs = tk.Input(shape=(28, 28), dtype="float32", name=fashion_cnn.FEATURE)
    x = L.Rescaling(1.0 / 255.0)(inputs)
    x = L.Reshape((28, 28, 1))(x)
    x = L.Conv2D(cfg["conv1_filters"], 3, activation="relu")(x)
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(cfg["conv2_filters"], 3, activation="relu")(x)
    x = L.MaxPooling2D()(x)
    x = L.Flatten()(x)
    x = L.Dense(cfg["dense_units"], activation="relu")(x)
    outputs = L.Dense(fashion_cnn.NUM_CLASSES, activation="softmax", name="probabilities")(x)
    return tk.Model(inputs, outputs, name="fashion_cnn")


# --- role: a tf.distribute.Server (ps or worker) ---------------------------------------------


def role_tf_server(args: argparse.Namespace) -> None:
    import tensorflow as tf
    from mlmesh.server import write_port_file

    cluster = json.loads(args.cluster)
    server = tf.distribute.Server(
        tf.train.ClusterSpec(cluster), job_name=args.job, task_index=args.index, protocol="grpc", start=True
    )
    port = int(cluster[args.job][args.index].rsplit(":", 1)[1])
    write_port_file(Path(args.port_file), {"port": port, "pid": os.getpid()})
    server.join()


# --- role: the ParameterServerStrategy coordinator -------------------------------------------


class PeerCoordinator:
    def __init__(self, cluster: dict[str, list[str]], data_dir: Path, n_train: int, n_test: int) -> None:
        import tensorflow as tf
        import tf_keras

        self.tf, self.tk = tf, tf_keras
        self.images, self.labels = str(data_dir / IMAGES_FILE), str(data_dir / LABELS_FILE)
        self.n_train = n_train
        self.test_x, self.test_y = load("test", n_test)
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type="chief", task_id=0, rpc_layer="grpc"
        )
        partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=256 << 10, max_shards=NUM_PS
        )  # the tutorial's setting: dense/kernel (800 KB) is split over both ps tasks
        self.strategy = tf.distribute.experimental.ParameterServerStrategy(
            resolver, variable_partitioner=partitioner
        )
        self.coordinator = tf.distribute.coordinator.ClusterCoordinator(self.strategy)

    def dataset_fn(self) -> Any:
        tf, n = self.tf, self.n_train
        images, labels = self.images, self.labels

        def fn() -> Any:
            x = tf.data.FixedLengthRecordDataset(images, 28 * 28)
            y = tf.data.FixedLengthRecordDataset(labels, 1)

            def decode(img: Any, lab: Any) -> Any:
                return (
                    tf.reshape(tf.io.decode_raw(img, tf.uint8), [28, 28]),
                    tf.cast(tf.io.decode_raw(lab, tf.uint8)[0], tf.int64),
                )

            ds = tf.data.Dataset.zip((x, y)).map(decode).cache()
            ds = ds.shuffle(n, reshuffle_each_iteration=True).repeat().batch(BATCH, drop_remainder=True)
            ds = ds.map(lambda img, lab: (tf.cast(img, tf.float32), lab))
            return ds.prefetch(tf.data.AUTOTUNE)

        return fn

    def run(self, epochs: int, steps_per_call: int) -> dict[str, Any]:
        tf, tk, strategy = self.tf, self.tk, self.strategy
        total_steps = math.ceil(epochs * self.n_train / BATCH)
        calls = math.ceil(total_steps / steps_per_call)
        with strategy.scope():
            model = build_tf_keras(tk)
            optimizer = tk.optimizers.Adam(learning_rate=LR)
            optimizer.build(model.trainable_variables)
        loss_obj = tk.losses.SparseCategoricalCrossentropy(reduction=tk.losses.Reduction.NONE)
        placement = sorted({s.device.split("/device")[0] for v in model.variables for s in _shards(v)})

        def replica_fn(x: Any, y: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(loss_obj(y, model(x, training=True)))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        if steps_per_call == 1:

            @tf.function
            def train_fn(iterator: Any) -> Any:
                x, y = next(iterator)
                return strategy.run(replica_fn, args=(x, y))
        else:

            @tf.function
            def train_fn(iterator: Any) -> Any:
                total = tf.constant(0.0)
                for _ in tf.range(steps_per_call):
                    x, y = next(iterator)
                    total += strategy.run(replica_fn, args=(x, y))
                return total / steps_per_call

        started = time.perf_counter()
        iterator = iter(self.coordinator.create_per_worker_dataset(self.dataset_fn()))
        last = None
        for _ in range(calls):
            last = self.coordinator.schedule(train_fn, args=(iterator,))
        self.coordinator.join()
        seconds = time.perf_counter() - started
        loss = float(last.fetch()) if last is not None else float("nan")

        @tf.function
        def predict(x: Any) -> Any:
            return tf.argmax(model(x, training=False), axis=1)

        correct = 0
        for i in range(0, len(self.test_y), 1000):
            pred = predict(tf.constant(self.test_x[i : i + 1000], tf.float32)).numpy()
            correct += int(np.sum(pred == self.test_y[i : i + 1000]))
        return {
            "examples": calls * steps_per_call * BATCH,
            "steps": calls * steps_per_call,
            "seconds": seconds,
            "accuracy": correct / len(self.test_y),
            "loss": loss,
            "params": int(model.count_params()),
            "placement": placement,
        }


def _shards(v: Any) -> list[Any]:
    return list(getattr(v, "variables", [v]))


# --- role: the single-process Keras 3 floor --------------------------------------------------


class Floor:
    def __init__(self, n_train: int, n_test: int) -> None:
        x, self.y = load("train", n_train)
        self.x = x.astype(np.float32)
        tx, self.test_y = load("test", n_test)
        self.test_x = tx.astype(np.float32)

    def run(self, epochs: int) -> dict[str, Any]:
        import keras
        from mlmesh.models import fashion_cnn

        model = fashion_cnn.build().model
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=LR),
            loss=keras.losses.SparseCategoricalCrossentropy(),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        started = time.perf_counter()
        history = model.fit(self.x, self.y, batch_size=BATCH, epochs=epochs, shuffle=True, verbose=0)
        seconds = time.perf_counter() - started
        _, acc = model.evaluate(self.test_x, self.test_y, batch_size=1000, verbose=0)
        return {
            "examples": epochs * len(self.y),
            "steps": epochs * math.ceil(len(self.y) / BATCH),
            "seconds": seconds,
            "accuracy": float(acc),
            "loss": float(history.history["loss"][-1]),
            "params": int(model.count_params()),
        }


def role_client(args: argparse.Namespace) -> None:
    limit_train, limit_test = args.limit_train or None, args.limit_test or None
    n_train, n_test = len(load("train", limit_train)[1]), len(load("test", limit_test)[1])
    if args.system == "peer":
        peer = PeerCoordinator(json.loads(args.cluster), Path(args.data_dir), n_train, n_test)

        def handle(msg: dict[str, Any]) -> dict[str, Any]:
            return peer.run(msg["epochs"], msg["steps_per_call"])
    else:
        floor = Floor(n_train, n_test)

        def handle(msg: dict[str, Any]) -> dict[str, Any]:
            return floor.run(msg["epochs"])

    serve_commands(handle)


# --- (a) mlmesh: one `mlmesh demo` per run ---------------------------------------------------


def run_mlmesh(kids: Children, run: Path, tag: str, epochs: int, limits: list[str]) -> dict[str, Any]:
    root = run / f"mlmesh-{tag}"
    argv = [
        PYTHON, "-m", "mlmesh.cli.main", "demo",
        "--root", str(root), "--epochs", str(epochs), "--batch-size", str(BATCH),
        "--workers", str(NUM_WORKERS), "--shards", str(NUM_PS),
        "--optimizer", "adam", "--lr", str(LR),
        "--log-level", "warning", "--train-timeout", str(CALL_TIMEOUT),
        *limits,
    ]  # fmt: skip
    child = kids.start(f"mlmesh-demo-{tag}", argv, wait=None)
    try:
        code = child.proc.wait(CALL_TIMEOUT + 300)
    except Exception:
        child.stop()
        raise
    finally:
        if child.proc.poll() is not None:
            child.stop()  # reaps nothing new; kills any straggler left in its process group
            kids.children.remove(child)
    path = root / "demo-summary.json"
    summary: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if code != 0 or not summary.get("ok"):
        raise RuntimeError(
            f"mlmesh demo exited {code}: {summary.get('error', 'no summary')}\n{child.log_tail(40)}"
        )
    left = _alive([int(p) for p in summary.get("pids", [])], wait=10.0)
    if left:
        print(f"  warning: mlmesh demo left processes running: {left}", flush=True)
    return {
        "examples": int(summary["examples"]),
        "steps": int(summary["steps"]),
        "seconds": float(summary["train_seconds"]),
        "accuracy": float(summary["test_accuracy"]),
        "window_rate": float(summary["examples_per_second"]),
        "startup": float(summary.get("startup_seconds", 0.0)),
        "total": float(summary.get("total_seconds", 0.0)),
    }


def _alive(pids: list[int], wait: float) -> list[int]:
    deadline = time.monotonic() + wait
    while True:
        left = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                left.append(pid)
            except ProcessLookupError:
                pass
            except PermissionError:
                left.append(pid)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


# --- the driver ----------------------------------------------------------------------------


def start_peer(kids: Children, run: Path, limits: argparse.Namespace) -> Child:
    """2 ps + 2 worker tf.distribute.Server processes and the coordinator process."""
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
    argv = role_argv(
        SCRIPT, "client", "--system", "peer", "--cluster", json.dumps(cluster),
        "--data-dir", str(run), *_limit_args(limits),
    )  # fmt: skip
    return kids.start("peer-coordinator", argv, protocol=True)


def _limit_args(limits: argparse.Namespace) -> list[str]:
    out = []
    if limits.limit_train:
        out += ["--limit-train", str(limits.limit_train)]
    if limits.limit_test:
        out += ["--limit-test", str(limits.limit_test)]
    return out


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=0, help="Training epochs (0: 2, or 1 with --quick).")
    p.add_argument("--limit-train", type=int, default=0, help="First N train images (0: all; quick 6,000).")
    p.add_argument("--limit-test", type=int, default=0, help="First N test images (0: all; quick 2,000).")
    p.add_argument(
        "--budget",
        type=float,
        default=0.0,
        help="Seconds of runs: no repetition starts past the second unless it fits (0: 780; quick 170).",
    )
    for hidden in ("--system", "--cluster", "--data-dir", "--job", "--port-file"):
        p.add_argument(hidden, default="", help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "tf-server":
        role_tf_server(args)
        return 0
    if args.role == "client":
        role_client(args)
        return 0

    install_signal_handlers()
    if args.quick:
        args.limit_train = args.limit_train or QUICK_TRAIN
        args.limit_test = args.limit_test or QUICK_TEST
    epochs = args.epochs or (1 if args.quick else 2)
    reps = args.reps or (1 if args.quick else 3)
    budget = args.budget or (170.0 if args.quick else 780.0)
    wait_for_quiet(args)
    train_x, train_y = load("train", args.limit_train or None)
    n_test = len(load("test", args.limit_test or None)[1])
    print(
        f"fashion_cnn, {len(train_y):,} train / {n_test:,} test images, batch {BATCH}, Adam {LR}, "
        f"{epochs} epoch(s), {NUM_WORKERS} workers + {NUM_PS} ps; up to {reps} repetition(s), "
        f"budget {budget:.0f}s",
        flush=True,
    )
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in SYSTEMS}
    loads: list[float] = [os.getloadavg()[0]]
    with scratch_dir(args, BENCHMARK) as run, Children(run) as kids:
        # The peer's workers read the very same images, as raw bytes (no header, no gzip).
        (run / IMAGES_FILE).write_bytes(np.ascontiguousarray(train_x, dtype=np.uint8).tobytes())
        (run / LABELS_FILE).write_bytes(np.asarray(train_y, dtype=np.uint8).tobytes())
        del train_x
        peer = start_peer(kids, run, args)
        floor = kids.start(
            "floor", role_argv(SCRIPT, "client", "--system", "floor", *_limit_args(args)), protocol=True
        )
        peer.recv(300)
        floor.recv(300)
        limits = _limit_args(args)
        began = time.monotonic()
        for rep in range(reps):
            rep_started = time.monotonic()
            if rep >= 2 and rep_started - began + (rep_started - began) / rep > budget:
                print(f"  budget: stopping after {rep} repetitions", flush=True)
                break
            order = SYSTEMS[rep % len(SYSTEMS) :] + SYSTEMS[: rep % len(SYSTEMS)]
            for system in order:
                loads.append(os.getloadavg()[0])
                if system == "mlmesh":
                    out = run_mlmesh(kids, run, str(rep), epochs, limits)
                elif system == "floor":
                    out = floor.call({"cmd": "run", "epochs": epochs}, CALL_TIMEOUT)
                else:
                    k = int(system.removeprefix("peer"))
                    out = peer.call({"cmd": "run", "epochs": epochs, "steps_per_call": k}, CALL_TIMEOUT)
                out["rate"] = out["examples"] / out["seconds"]
                results[system].append(out)
                extra = (
                    f" (window rate {out['window_rate']:,.0f}/s, {out['steps']} steps, "
                    f"start-up {out['startup']:.1f}s, demo total {out['total']:.1f}s)"
                    if system == "mlmesh"
                    else f" ({out['steps']} steps, final loss {out['loss']:.3f})"
                )
                print(
                    f"  rep {rep + 1}: {system:7s} {out['examples']:>7,} examples in {out['seconds']:6.1f}s "
                    f"= {out['rate']:7,.0f}/s, test accuracy {out['accuracy']:.4f}{extra}",
                    flush=True,
                )
            loads.append(os.getloadavg()[0])
        done = len(results["mlmesh"])
        params = {results["peer1"][0]["params"], results["floor"][0]["params"]}
        if len(params) != 1:
            raise RuntimeError(f"the peer's model and the Keras 3 model differ in size: {params}")
        print(f"peer variables live on: {', '.join(results['peer1'][0]['placement'])}")
        print(f"elapsed in runs: {time.monotonic() - began:.0f}s for {done} repetition(s)")

    rate = {s: median([r["rate"] for r in rs]) for s, rs in results.items()}
    acc = {s: median([r["accuracy"] for r in rs]) for s, rs in results.items()}
    window = median([r["window_rate"] for r in results["mlmesh"]])
    names = {
        "peer1": "PS strategy + tf_keras, 1 step/function",
        "peer10": "PS strategy + tf_keras, 10 steps/function",
        "floor": "Keras 3 fit, 1 process (floor)",
    }
    short = {"peer1": "PS strategy 1 step/fn", "peer10": "PS strategy 10 steps/fn", "floor": "1 process"}
    spread = {
        s: f"{min(r['rate'] for r in rs):,.0f}-{max(r['rate'] for r in rs):,.0f}" for s, rs in results.items()
    }
    cases = [
        Case(f"train rate vs {short[s]}", "examples/s", rate["mlmesh"], names[s], rate[s]) for s in names
    ]
    cases += [
        Case(f"test accuracy vs {short[s]}", "accuracy", acc["mlmesh"], names[s], acc[s]) for s in names
    ]
    for case, s in zip(cases, names, strict=False):
        case.note = f"per-repetition examples/s: mlmesh {spread['mlmesh']}, baseline {spread[s]}"
    cases[0].note += (
        f"; mlmesh rate = examples / train_seconds (the demo's own examples_per_second, "
        f"a 30 s moving window: {window:,.0f})"
    )
    print_table(BENCHMARK, cases)
    print(
        f"machine: {machine_line()}; load average seen {min(loads):.2f}-{max(loads):.2f}; "
        f"medians of {done} repetition(s); {epochs} epoch(s) of {len(train_y):,} images"
    )
    write_json(args.json, BENCHMARK, cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
