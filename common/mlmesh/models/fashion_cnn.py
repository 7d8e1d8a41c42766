"""The shipped Fashion-MNIST classifier: `mlmesh.models.fashion_cnn:build`.

A small CNN that takes raw pixels (float32 [28, 28], values 0..255) and
scales them itself, so the exported SavedModel serves raw images. With the
trainer's defaults (Adam 1e-3, batch 128, 3 epochs, 2 async workers) it
reaches about 0.90 test accuracy.
"""

from __future__ import annotations

from mlmesh.model import ModelSpec

FEATURE = "image"
LABEL = "label"
NUM_CLASSES = 10

# model_args accepted by build(), with their defaults; values arrive as strings.
DEFAULTS: dict[str, int] = {"conv1_filters": 32, "conv2_filters": 64, "dense_units": 128}


def _int_args(args: dict[str, str]) -> dict[str, int]:
    unknown = sorted(set(args) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown model_args {unknown}; fashion_cnn accepts {sorted(DEFAULTS)}")
    out = dict(DEFAULTS)
    for key, raw in args.items():
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"model_args[{key!r}] = {raw!r} is not an integer") from None
        if not 1 <= value <= 4096:
            raise ValueError(f"model_args[{key!r}] = {value} is outside 1..4096")
        out[key] = value
    return out


def build(**args: str) -> ModelSpec:
    """Build a fresh, untrained model. Deterministic in structure for given args."""
    import keras  # deferred: importing this module must not load TensorFlow

    cfg = _int_args(dict(args))
    inputs = keras.Input(shape=(28, 28), dtype="float32", name=FEATURE)
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Reshape((28, 28, 1))(x)
    x = keras.layers.Conv2D(cfg["conv1_filters"], 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(cfg["conv2_filters"], 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(cfg["dense_units"], activation="relu")(x)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="fashion_cnn")
    return ModelSpec(
        model=model,
        loss=keras.losses.SparseCategoricalCrossentropy(),
        features=[FEATURE],
        label=LABEL,
        metrics=[lambda: keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        input_dtypes={FEATURE: "float32"},
    )
