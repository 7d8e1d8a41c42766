"""The embedding workload of `benchmarks/ps_vs_tf.py`: data, and the same model three ways.

    job model: "benchmarks.models.zipf_embedding:build"   (mlmesh workers import it by path)

- Data (`make_examples`): each example is IDS_PER_EXAMPLE ids drawn from Zipf(ZIPF_S) over
  NUM_IDS ids, and a 0/1 label: whether the mean of a fixed random score per id is above its
  median (so about half the labels are 1). The scores, that median and the popularity -> id
  permutation come from DATA_SEED, so every split
  (and every process) shares one labelling function; the permutation spreads popular ids
  over the whole table, as hashed ids are in practice (else TensorFlow's contiguous
  partitions would put every hot row on one ps task).
- Model: ids int64 [IDS_PER_EXAMPLE] -> NUM_IDS x EMBED_DIM embedding -> mean -> Dense(HIDDEN,
  relu) -> Dense(1, sigmoid), binary cross-entropy. Only frequent ids can be learnt, so the
  accuracy ceiling is well below 1; what matters is that every system gets the same.
  - `build()`: Keras 3, for mlmesh (and the single-process Keras floor). Its table is
    `sparse_variables`, so shards keep it row-sharded and workers pull and push only the rows
    a batch touches. The layer gathers rows from the variable itself: Keras 3's stock
    `Embedding` reads the whole variable, and after the worker's sparse assign TensorFlow
    copies all 128 MB on every read (measured: 23 ms vs 4.8 ms per worker step).
  - `build_tf_keras(tk)`: the same layers in tf_keras, for ParameterServerStrategy (its
    stock `Embedding` already gathers from the (sharded) variable).

Importing this module loads no TensorFlow.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from mlmesh.model import ModelSpec

NUM_IDS = 1_000_000
EMBED_DIM = 32
IDS_PER_EXAMPLE = 8
HIDDEN = 64
ZIPF_S = 1.1
DATA_SEED = 20261127
FEATURE, LABEL = "ids", "label"
TABLE = "embedding/embeddings"  # the table's variable path in the Keras 3 model
INIT_SCALE = 0.05  # uniform(-0.05, 0.05): Keras' Embedding default, both stacks


@functools.cache
def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(cumulative Zipf probabilities by rank, rank -> id permutation, score per id, label threshold)."""
    rng = np.random.default_rng(DATA_SEED)
    weights = np.arange(1, NUM_IDS + 1, dtype=np.float64) ** -ZIPF_S
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    perm = rng.permutation(NUM_IDS).astype(np.int64)
    score = rng.standard_normal(NUM_IDS)
    # The most popular ids sit in most examples, so the mean score is not centred on 0.
    reference = _draw_ids(cdf, perm, rng, 1 << 16)
    return cdf, perm, score, float(np.median(score[reference].mean(axis=1)))


def _draw_ids(cdf: np.ndarray, perm: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    ranks = np.searchsorted(cdf, rng.random((n, IDS_PER_EXAMPLE)), side="right")
    return perm[np.minimum(ranks, NUM_IDS - 1)]


def make_examples(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n examples: ids int64 [n, IDS_PER_EXAMPLE] and labels float32 [n] (0 or 1)."""
    cdf, perm, score, threshold = _tables()
    ids = _draw_ids(cdf, perm, np.random.default_rng([DATA_SEED, seed]), n)
    labels = (score[ids].mean(axis=1) > threshold).astype(np.float32)
    return ids, labels


def _row_gather_layer() -> Any:
    import keras
    import tensorflow as tf

    class RowGatherEmbedding(keras.layers.Layer):
        """An embedding that reads only the rows it looks up (`tf.gather` on the variable)."""

        def __init__(self, input_dim: int, output_dim: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.input_dim, self.output_dim = input_dim, output_dim

        def build(self, input_shape: Any) -> None:
            self.embeddings = self.add_weight(
                shape=(self.input_dim, self.output_dim),
                initializer=keras.initializers.RandomUniform(-INIT_SCALE, INIT_SCALE),
                name="embeddings",
            )

        def call(self, ids: Any) -> Any:
            return tf.gather(self.embeddings.value, tf.cast(ids, tf.int64))

        def compute_output_shape(self, input_shape: Any) -> Any:
            return (*input_shape, self.output_dim)

    return RowGatherEmbedding


def build(**args: str) -> ModelSpec:
    """The Keras 3 model for mlmesh jobs; takes no model_args."""
    if args:
        raise ValueError(f"zipf_embedding takes no model_args, got {sorted(args)}")
    import keras

    ids = keras.Input(shape=(IDS_PER_EXAMPLE,), dtype="int64", name=FEATURE)
    x = _row_gather_layer()(NUM_IDS, EMBED_DIM, name="embedding")(ids)
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = keras.layers.Dense(HIDDEN, activation="relu")(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
    return ModelSpec(
        model=keras.Model(ids, out, name="zipf_embedding"),
        loss=keras.losses.BinaryCrossentropy(),
        features=[FEATURE],
        label=LABEL,
        metrics=[lambda: keras.metrics.BinaryAccuracy(name="accuracy")],
        input_dtypes={FEATURE: "int64"},
        sparse_variables=[TABLE],
    )


def build_tf_keras(tk: Any) -> Any:
    """`build()` layer for layer in tf_keras (Keras 2), for ParameterServerStrategy."""
    L = tk.layers
    ids = tk.Input(shape=(IDS_PER_EXAMPLE,), dtype="int64", name=FEATURE)
    x = L.Embedding(
        NUM_IDS,
        EMBED_DIM,
        embeddings_initializer=tk.initializers.RandomUniform(-INIT_SCALE, INIT_SCALE),
        name="embedding",
    )(ids)
    x = L.GlobalAveragePooling1D()(x)
    x = L.Dense(HIDDEN, activation="relu")(x)
    out = L.Dense(1, activation="sigmoid", name="probability")(x)
    return tk.Model(ids, out, name="zipf_embedding")
