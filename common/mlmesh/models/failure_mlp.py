"""The train-failure predictor: `mlmesh.models.failure_mlp:build`.

A small MLP over the window features of `mlmesh.transforms.windows` (float32[F], in sensor
units) predicting the probability that the component fails within the next hour. The
features are normalised inside the model with fixed constants (`windows.feature_scaling`,
not statistics adapted on data), so the structure and the first layer's behaviour are the
same in every process, and the exported SavedModel serves raw features.

Output: "probability", float32 [batch] (a sigmoid). Loss: binary cross-entropy, positives
weighted by `pos_weight` because only ~3 % of windows are positive. Metrics: precision and
recall at 0.5, and ROC AUC.

Inputs: features float32 [F]; label: label int64 [] (0/1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlmesh.model import ModelSpec
from mlmesh.transforms import windows

FEATURE = "features"
LABEL = "label"


@dataclass(frozen=True)
class Config:
    """model_args, parsed."""

    hidden: int = 64  # units of the first hidden layer; the second has half
    window: int = windows.DEFAULT_WINDOW  # the transform's window: it sets the slope scale
    pos_weight: float = 3.0  # weight of a positive window in the loss
    dropout: float = 0.0  # after the first hidden layer; 0 = no Dropout layer


_RANGES: dict[str, tuple[type, float, float]] = {
    "hidden": (int, 2, 4096),
    "window": (int, 2, 1440),
    "pos_weight": (float, 0.01, 1000.0),
    "dropout": (float, 0.0, 0.9),
}


def parse_args(args: dict[str, str]) -> Config:
    """Config from string model_args; ValueError names the argument, value and expectation."""
    unknown = sorted(set(args) - set(_RANGES))
    if unknown:
        raise ValueError(f"unknown model_args {unknown}; failure_mlp accepts {sorted(_RANGES)}")
    values: dict[str, Any] = {}
    for key, raw in args.items():
        kind, low, high = _RANGES[key]
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(
                f"model_args[{key!r}] = {raw!r} is not a{'n integer' if kind is int else ' number'}"
            ) from None
        if not low <= value <= high:  # also rejects nan
            raise ValueError(f"model_args[{key!r}] = {value} is outside {low}..{high}")
        values[key] = value
    return Config(**values)


def build(**args: str) -> ModelSpec:
    """Build a fresh, untrained model. Deterministic in structure for given args."""
    import keras  # deferred: importing this module must not load TensorFlow

    cfg = parse_args(dict(args))
    offset, scale = windows.feature_scaling(windows.DEFAULT_SENSORS, cfg.window)
    inputs = keras.Input(shape=(len(offset),), dtype="float32", name=FEATURE)
    # Normalization with given mean and variance has no adapt step and no trainable weights.
    x = keras.layers.Normalization(mean=offset, variance=scale**2, name="scaling")(inputs)
    x = keras.layers.Dense(cfg.hidden, activation="relu", name="hidden1")(x)
    if cfg.dropout:
        x = keras.layers.Dropout(cfg.dropout, seed=0, name="dropout")(x)
    x = keras.layers.Dense(max(1, cfg.hidden // 2), activation="relu", name="hidden2")(x)
    x = keras.layers.Dense(1, activation="sigmoid", name="logit")(x)
    outputs = keras.layers.Reshape((), name="probability")(x)
    model = keras.Model(inputs, outputs, name="failure_mlp")
    return ModelSpec(
        model=model,
        loss=_weighted_bce(cfg.pos_weight),
        features=[FEATURE],
        label=LABEL,
        metrics=[
            lambda: keras.metrics.Precision(name="precision"),
            lambda: keras.metrics.Recall(name="recall"),
            lambda: keras.metrics.AUC(name="auc"),
        ],
        input_dtypes={FEATURE: "float32"},
    )


def _weighted_bce(pos_weight: float) -> Any:
    """Mean binary cross-entropy with positives counted `pos_weight` times (a callable, so the
    trainer can call it as loss(y_true, y_pred) with int64 labels)."""
    from keras import ops

    def loss(y_true: Any, y_pred: Any) -> Any:
        y = ops.cast(ops.reshape(y_true, (-1,)), "float32")
        p = ops.clip(ops.reshape(y_pred, (-1,)), 1e-7, 1.0 - 1e-7)
        weight = 1.0 + (pos_weight - 1.0) * y
        return ops.mean(-weight * (y * ops.log(p) + (1.0 - y) * ops.log(1.0 - p)))

    return loss
