"""The MovieLens-100k recommender: `mlmesh.models.movielens_mf:build`.

Biased matrix factorisation (Koren et al. 2009; Surprise's "SVD"):

    rating(u, i) = global_mean + b + b_u + b_i + p_u . q_i   [+ mlp([p_u, q_i])]

p, q (user/item embeddings) and b_u, b_i (user/item biases, 1-wide tables)
are `sparse_variables`: the shards row-shard them and a worker pulls and
pushes only the rows its batch touches; the shards' optimizers update only
those rows and their slots (lazy). `b` is a dense scalar. Each table is its
own Embedding layer fed straight from an Input, which is what lets the
trainer derive the ids a batch reads (trainer_svc/core/step.py).

L2 regularisation is in the loss, on the looked-up rows only (per rating, as
Surprise's SGD does): a Keras `embeddings_regularizer` would penalise the
whole table every step, giving every row a gradient and the push the whole
table. Eval loss (what the coordinator reports as "loss") is the plain MSE;
the "rmse" metric is the test RMSE.

At inference (training=False) predictions are clipped to the rating scale,
[1, 5]; in training they are not, so out-of-range predictions still get a
gradient.

Inputs: user int64 [], item int64 [] (contiguous indices, as
`mlmesh.data.movielens` makes them); label: rating float32 [].
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from mlmesh.data.movielens import NUM_ITEMS, NUM_USERS
from mlmesh.model import ModelSpec

FEATURES = ("user", "item")
LABEL = "rating"
# Table paths (Keras variable paths): what the shards row-shard.
SPARSE_VARIABLES = (
    "user_embedding/embeddings",
    "item_embedding/embeddings",
    "user_bias/embeddings",
    "item_bias/embeddings",
)
# The mean rating of ML-100k; the trainable global bias learns the rest.
GLOBAL_MEAN = 3.53
RATING_RANGE = (1.0, 5.0)


@dataclass(frozen=True)
class Config:
    """model_args, parsed. Defaults are the tuned ones (README: "MovieLens-100k")."""

    dim: int = 64
    reg: float = 0.1  # L2 on p_u and q_i, per rating
    bias_reg: float = 0.0  # L2 on b_u and b_i, per rating
    init_std: float = 0.05  # p, q ~ N(0, init_std); biases start at 0
    mlp: int = 0  # hidden units of the optional MLP over [p_u, q_i]; 0 = off
    num_users: int = NUM_USERS
    num_items: int = NUM_ITEMS
    global_mean: float = GLOBAL_MEAN
    clip: bool = True


_INT_RANGES = {"dim": (1, 1024), "mlp": (0, 4096), "num_users": (1, 10**8), "num_items": (1, 10**8)}
_FLOAT_RANGES = {
    "reg": (0.0, 100.0),
    "bias_reg": (0.0, 100.0),
    "init_std": (0.0, 10.0),
    "global_mean": (-1e6, 1e6),
}
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parse_args(args: dict[str, str]) -> Config:
    """Config from string model_args; ValueError names the argument, value and expectation."""
    known = sorted([*_INT_RANGES, *_FLOAT_RANGES, "clip"])
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise ValueError(f"unknown model_args {unknown}; movielens_mf accepts {known}")
    values: dict[str, Any] = {}
    for key, raw in args.items():
        if key in _INT_RANGES:
            try:
                value: Any = int(raw)
            except ValueError:
                raise ValueError(f"model_args[{key!r}] = {raw!r} is not an integer") from None
            low, high = _INT_RANGES[key]
        elif key in _FLOAT_RANGES:
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"model_args[{key!r}] = {raw!r} is not a number") from None
            if not math.isfinite(value):
                raise ValueError(f"model_args[{key!r}] = {raw!r} is not finite")
            low, high = _FLOAT_RANGES[key]
        else:
            if raw.lower() not in _BOOLS:
                raise ValueError(f"model_args[{key!r}] = {raw!r} is not one of {sorted(_BOOLS)}")
            values[key] = _BOOLS[raw.lower()]
            continue
        if not low <= value <= high:
            raise ValueError(f"model_args[{key!r}] = {value} is outside {low}..{high}")
        values[key] = value
    return Config(**values)


def build(**args: str) -> ModelSpec:
    """Build a fresh, untrained model. Deterministic in structure for given args."""
    import keras  # deferred: importing this module must not load TensorFlow

    cfg = parse_args(dict(args))
    layers = _layers()
    user = keras.Input(shape=(), dtype="int64", name="user")
    item = keras.Input(shape=(), dtype="int64", name="item")
    init = keras.initializers.RandomNormal(stddev=cfg.init_std)

    def table(ids: Any, rows: int, width: int, name: str, initializer: Any) -> Any:
        return keras.layers.Embedding(rows, width, embeddings_initializer=initializer, name=name)(ids)

    p = table(user, cfg.num_users, cfg.dim, "user_embedding", init)
    q = table(item, cfg.num_items, cfg.dim, "item_embedding", init)
    b_u = table(user, cfg.num_users, 1, "user_bias", "zeros")
    b_i = table(item, cfg.num_items, 1, "item_bias", "zeros")
    # Penalties are identity layers that add a loss, so they sit between the
    # lookup and its use without changing which layer owns the table.
    p = layers.RowL2(cfg.reg, name="user_embedding_l2")(p)
    q = layers.RowL2(cfg.reg, name="item_embedding_l2")(q)
    b_u = layers.RowL2(cfg.bias_reg, name="user_bias_l2")(b_u)
    b_i = layers.RowL2(cfg.bias_reg, name="item_bias_l2")(b_i)
    terms = [keras.layers.Dot(axes=1, name="dot")([p, q]), b_u, b_i]
    if cfg.mlp:
        h = keras.layers.Concatenate(name="mlp_input")([p, q])
        h = keras.layers.Dense(cfg.mlp, activation="relu", name="mlp_hidden")(h)
        terms.append(keras.layers.Dense(1, kernel_initializer="zeros", name="mlp_out")(h))
    score = keras.layers.Add(name="score")(terms)
    score = layers.GlobalBias(cfg.global_mean, name="global_bias")(score)
    low, high = RATING_RANGE if cfg.clip else (-math.inf, math.inf)
    rating = layers.Rating(low, high, name="rating")(score)
    model = keras.Model({"user": user, "item": item}, rating, name="movielens_mf")
    return ModelSpec(
        model=model,
        loss=keras.losses.MeanSquaredError(),
        features=list(FEATURES),
        label=LABEL,
        metrics=[lambda: keras.metrics.RootMeanSquaredError(name="rmse")],
        input_dtypes={"user": "int64", "item": "int64"},
        sparse_variables=list(SPARSE_VARIABLES),
    )


@functools.cache
def _layers() -> SimpleNamespace:
    """The custom layers, defined on first use so that importing this module does not load Keras."""
    import keras
    from keras import ops

    class RowL2(keras.layers.Layer):
        """Identity; adds `weight * mean over the batch of sum(row**2)` to the model's losses."""

        def __init__(self, weight: float, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.weight = weight

        def call(self, rows: Any) -> Any:
            if self.weight:
                self.add_loss(self.weight * ops.mean(ops.sum(ops.square(rows), axis=-1)))
            return rows

    class GlobalBias(keras.layers.Layer):
        """x + mean + b, with b a trainable scalar (dense: every step updates it)."""

        def __init__(self, mean: float, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.mean = mean

        def build(self, input_shape: Any) -> None:
            self.bias = self.add_weight(shape=(1,), initializer="zeros", name="bias")

        def call(self, x: Any) -> Any:
            return x + self.mean + self.bias

    class Rating(keras.layers.Layer):
        """[batch, 1] -> [batch], clipped to [low, high] at inference only."""

        def __init__(self, low: float, high: float, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.low, self.high = low, high

        def call(self, x: Any, training: bool | None = None) -> Any:
            x = ops.squeeze(x, axis=-1)
            if training or not math.isfinite(self.low + self.high):
                return x
            return ops.clip(x, self.low, self.high)

    return SimpleNamespace(RowL2=RowL2, GlobalBias=GlobalBias, Rating=Rating)
