"""The TensorFlow side of `benchmarks/ps_vs_tf.py`: ParameterServerStrategy (tf_keras) and the
single-process Keras 3 floor, as role processes the driver talks to over the line protocol.

- `role_tf_server`: one `tf.distribute.Server` (ps or worker task).
- `PeerCoordinator`: the chief of a 2 ps + 2 worker cluster, running the TensorFlow tutorial's
  custom loop - `ClusterCoordinator.schedule` of a `tf.function` doing k steps over
  `create_per_worker_dataset` - with variables split by `MinSizePartitioner` (256 KiB, at most
  2 shards: the CNN's dense kernel and the embedding table are split, small variables are not).
  Optimizer: tf_keras Adam, whose sparse update still rewrites every row of the table and both
  slots; or `LazyAdam` below (only the touched rows, like mlmesh's shards).
- `Floor`: `model.fit` of the very Keras 3 model mlmesh trains, in one process.

Timing, the same on every side: the first `warmup` steps (tracing, dataset start, first
transfers) run first and are not timed; the rate is the remaining examples over their seconds.
Every run builds a fresh model. Workloads and their data files are described by `Workload`.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts the repository root on sys.path, for `benchmarks.models`)
import numpy as np

from benchmarks.models import zipf_embedding

NUM_PS = 2
NUM_WORKERS = 2
PARTITION_BYTES = 256 << 10  # MinSizePartitioner's default, and mlmesh's min_partition_bytes


@dataclass(frozen=True)
class Workload:
    """A training job both stacks run: model, batch, learning rate and the data files' layout.

    Files in `data_dir`: train-x.raw / train-y.raw (records back to back, no header, read by the
    TF workers), test-x.npy / test-y.npy.
    """

    name: str  # "cnn" or "embedding"
    batch: int
    lr: float
    x_dtype: str
    x_shape: tuple[int, ...]
    y_dtype: str

    def train_arrays(self, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
        x = np.fromfile(data_dir / "train-x.raw", dtype=self.x_dtype).reshape(-1, *self.x_shape)
        return x, np.fromfile(data_dir / "train-y.raw", dtype=self.y_dtype)

    def test_arrays(self, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
        return np.load(data_dir / "test-x.npy"), np.load(data_dir / "test-y.npy")

    def keras_model(self) -> Any:
        """The Keras 3 ModelSpec mlmesh trains."""
        if self.name == "cnn":
            from mlmesh.models import fashion_cnn

            return fashion_cnn.build()
        return zipf_embedding.build()

    def tf_keras_model(self, tk: Any) -> Any:
        if self.name == "cnn":
            return cnn_tf_keras(tk)
        return zipf_embedding.build_tf_keras(tk)

    def eval_loss_and_accuracy(self, prob: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Keras' cross-entropy (probabilities clipped at 1e-7) and accuracy, in NumPy."""
        p = np.clip(prob.astype(np.float64), 1e-7, 1 - 1e-7)
        if self.name == "cnn":
            yi = y.astype(np.int64)
            return float(-np.log(p[np.arange(len(yi)), yi]).mean()), float((p.argmax(1) == yi).mean())
        p, yf = p.reshape(-1), y.astype(np.float64).reshape(-1)
        loss = -(yf * np.log(p) + (1 - yf) * np.log(1 - p)).mean()
        return float(loss), float(((p > 0.5) == (yf > 0.5)).mean())


def cnn_tf_keras(tk: Any) -> Any:
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


# --- role: a tf.distribute.Server (ps or worker) -------------------------------------------------


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


# --- role: the ParameterServerStrategy coordinator ----------------------------------------------


def lazy_adam(tk: Any) -> Any:
    """tf_keras Adam whose sparse update touches only the rows in the gradient (m, v and the
    variable), like TensorFlow Addons' LazyAdam and mlmesh's shards; dense updates unchanged."""
    import tensorflow as tf

    class LazyAdam(tk.optimizers.Adam):  # type: ignore[misc, name-defined]
        def update_step(self, gradient: Any, variable: Any) -> Any:
            if not isinstance(gradient, tf.IndexedSlices):
                return super().update_step(gradient, variable)
            dtype = variable.dtype
            t = tf.cast(self.iterations + 1, dtype)
            b1, b2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
            alpha = tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - tf.pow(b2, t)) / (1 - tf.pow(b1, t))
            key = self._var_key(variable)
            m = self._momentums[self._index_dict[key]]
            v = self._velocities[self._index_dict[key]]
            rows, pos = tf.unique(gradient.indices)  # duplicate ids summed, as the shards do
            g = tf.math.unsorted_segment_sum(gradient.values, pos, tf.shape(rows)[0])
            m_rows = tf.gather(m, rows) * b1 + g * (1 - b1)
            v_rows = tf.gather(v, rows) * b2 + tf.square(g) * (1 - b2)
            m.scatter_update(tf.IndexedSlices(m_rows, rows))
            v.scatter_update(tf.IndexedSlices(v_rows, rows))
            variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))

    return LazyAdam


class PeerCoordinator:
    def __init__(self, cluster: dict[str, list[str]]) -> None:
        import tensorflow as tf
        import tf_keras

        self.tf, self.tk = tf, tf_keras
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type="chief", task_id=0, rpc_layer="grpc"
        )
        partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=PARTITION_BYTES, max_shards=NUM_PS
        )
        self.strategy = tf.distribute.experimental.ParameterServerStrategy(
            resolver, variable_partitioner=partitioner
        )
        self.coordinator = tf.distribute.coordinator.ClusterCoordinator(self.strategy)

    def dataset_fn(self, w: Workload, data_dir: Path, n: int) -> Any:
        tf = self.tf
        x_dtype, y_dtype = tf.as_dtype(w.x_dtype), tf.as_dtype(w.y_dtype)
        x_bytes, y_bytes = math.prod(w.x_shape) * x_dtype.size, y_dtype.size
        x_file, y_file = str(data_dir / "train-x.raw"), str(data_dir / "train-y.raw")
        x_shape, batch, cnn = list(w.x_shape), w.batch, w.name == "cnn"

        def fn() -> Any:
            def decode(x: Any, y: Any) -> Any:
                return tf.reshape(tf.io.decode_raw(x, x_dtype), x_shape), tf.io.decode_raw(y, y_dtype)[0]

            def model_types(x: Any, y: Any) -> Any:  # what the model and loss take
                return (tf.cast(x, tf.float32), y) if cnn else (x, tf.reshape(y, [-1, 1]))

            ds = tf.data.Dataset.zip(
                (
                    tf.data.FixedLengthRecordDataset(x_file, x_bytes),
                    tf.data.FixedLengthRecordDataset(y_file, y_bytes),
                )
            )
            ds = ds.map(decode).cache().shuffle(n, reshuffle_each_iteration=True).repeat()
            ds = ds.batch(batch, drop_remainder=True).map(model_types)
            return ds.prefetch(tf.data.AUTOTUNE)

        return fn

    def run(self, msg: dict[str, Any]) -> dict[str, Any]:
        """{"workload", "data_dir", "n_train", "steps", "warmup_steps", "steps_per_call", "optimizer"}."""
        tf, tk, strategy = self.tf, self.tk, self.strategy
        gc.collect()  # the previous run's variables, on the ps tasks too
        w = WORKLOADS[msg["workload"]]
        data_dir = Path(msg["data_dir"])
        k = int(msg["steps_per_call"])
        warmup_calls = max(NUM_WORKERS, math.ceil(msg["warmup_steps"] / k))
        calls = max(warmup_calls + 1, math.ceil(msg["steps"] / k))
        with strategy.scope():
            model = w.tf_keras_model(tk)
            opt_cls = lazy_adam(tk) if msg["optimizer"] == "lazy_adam" else tk.optimizers.Adam
            optimizer = opt_cls(learning_rate=w.lr)
            optimizer.build(model.trainable_variables)
        if w.name == "cnn":
            loss_obj = tk.losses.SparseCategoricalCrossentropy(reduction=tk.losses.Reduction.NONE)
        else:
            loss_obj = tk.losses.BinaryCrossentropy(reduction=tk.losses.Reduction.NONE)
        # Where each variable went, "name: ps0+ps1" for one the partitioner split.
        placement = [
            f"{v.name.split(':')[0]}: " + "+".join(_task(s.device) for s in _shards(v))
            for v in model.variables
        ]

        def replica_fn(x: Any, y: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(loss_obj(y, model(x, training=True)))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        @tf.function
        def train_fn(iterator: Any) -> Any:
            total = tf.constant(0.0)
            for _ in tf.range(k):  # k = 1: a one-iteration loop, microseconds more than a bare step
                x, y = next(iterator)
                total += strategy.run(replica_fn, args=(x, y))
            return total / k

        iterator = iter(
            self.coordinator.create_per_worker_dataset(self.dataset_fn(w, data_dir, msg["n_train"]))
        )
        for _ in range(warmup_calls):
            self.coordinator.schedule(train_fn, args=(iterator,))
        self.coordinator.join()
        started = time.perf_counter()
        last = [self.coordinator.schedule(train_fn, args=(iterator,)) for _ in range(calls - warmup_calls)]
        self.coordinator.join()
        ended = time.perf_counter()
        tail = [float(r.fetch()) for r in last[-max(1, 20 // k) :]]

        @tf.function
        def predict(x: Any) -> Any:
            return model(x, training=False)

        test_x, test_y = w.test_arrays(data_dir)
        probs = [predict(tf.constant(test_x[i : i + 1024])).numpy() for i in range(0, len(test_y), 1024)]
        eval_loss, accuracy = w.eval_loss_and_accuracy(np.concatenate(probs), test_y)
        params = int(model.count_params())
        return {
            "examples": calls * k * w.batch,
            "timed_examples": (calls - warmup_calls) * k * w.batch,
            "seconds": ended - started,
            "window": [started, ended],
            "train_loss": float(np.mean(tail)),
            "eval_loss": eval_loss,
            "accuracy": accuracy,
            "params": params,
            "placement": placement,
        }


def _shards(v: Any) -> list[Any]:
    return list(getattr(v, "variables", [v]))


def _task(device: str) -> str:
    """ "ps0" for "/job:ps/replica:0/task:0/device:CPU:0"."""
    parts = dict(p.split(":", 1) for p in device.strip("/").split("/") if ":" in p)
    return f"{parts.get('job', '?')}{parts.get('task', '?')}"


# --- role: the single-process Keras 3 floor --------------------------------------------------


class Floor:
    def run(self, msg: dict[str, Any]) -> dict[str, Any]:
        """{"workload", "data_dir", "epochs", "warmup_steps"}: `fit` over the whole train set."""
        import keras

        w = WORKLOADS[msg["workload"]]
        data_dir = Path(msg["data_dir"])
        x, y = w.train_arrays(data_dir)
        if w.name == "cnn":
            x = x.astype(np.float32)
        ms = w.keras_model()
        model = ms.model
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=w.lr),
            loss=ms.loss,
            metrics=[factory() for factory in ms.metrics],
        )
        window = _Window(int(msg["warmup_steps"]))
        epochs = int(msg["epochs"])
        history = model.fit(
            x, y, batch_size=w.batch, epochs=epochs, shuffle=True, verbose=0, callbacks=[window]
        )
        steps_per_epoch = math.ceil(len(y) / w.batch)
        test_x, test_y = w.test_arrays(data_dir)
        probs = model.predict(test_x, batch_size=1024, verbose=0)
        eval_loss, accuracy = w.eval_loss_and_accuracy(probs, test_y)
        params = int(model.count_params())
        del model, ms
        keras.backend.clear_session()
        gc.collect()
        return {
            "examples": epochs * len(y),
            "timed_examples": epochs * len(y) - window.warmup * w.batch,
            "seconds": window.ended - window.started,
            "window": [window.started, window.ended],
            "train_loss": float(history.history["loss"][-1]),
            "eval_loss": eval_loss,
            "accuracy": accuracy,
            "params": params,
            "steps": epochs * steps_per_epoch,
        }


class _Window:
    """A Keras callback timing from the end of step `warmup` to the end of training."""

    def __new__(cls, warmup: int) -> Any:
        import keras

        class Window(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.warmup, self.done, self.started, self.ended = warmup, 0, 0.0, 0.0

            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                self.done += 1
                if self.done == self.warmup:
                    self.started = time.perf_counter()

            def on_train_end(self, logs: Any = None) -> None:
                self.ended = time.perf_counter()

        return Window()


WORKLOADS: dict[str, Workload] = {
    "cnn": Workload("cnn", batch=64, lr=1e-3, x_dtype="uint8", x_shape=(28, 28), y_dtype="int64"),
    "embedding": Workload(
        "embedding",
        batch=1024,
        lr=1e-3,
        x_dtype="int64",
        x_shape=(zipf_embedding.IDS_PER_EXAMPLE,),
        y_dtype="float32",
    ),
}
