"""Model factories the tests name by import path ("trainer_svc.tests.models:tiny")."""

from __future__ import annotations

from mlmesh.model import ModelSpec


def tiny(units: str = "3") -> ModelSpec:
    """x float32 [4] -> softmax over `units` classes, label "y"."""
    import keras

    x = keras.Input(shape=(4,), dtype="float32", name="x")
    out = keras.layers.Dense(int(units), activation="softmax", name="probabilities")(x)
    return ModelSpec(
        model=keras.Model(x, out),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        features=["x"],
        label="y",
        metrics=[lambda: keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def with_embedding() -> ModelSpec:
    """ids int64 [] through a row-sharded embedding, plus x float32 [2]; regression on "y"."""
    import keras

    ids = keras.Input(shape=(), dtype="int64", name="ids")
    x = keras.Input(shape=(2,), dtype="float32", name="x")
    emb = keras.layers.Embedding(10, 3, name="emb")(ids)
    h = keras.layers.Concatenate()([emb, x])
    out = keras.layers.Dense(1, name="value")(h)
    return ModelSpec(
        model=keras.Model({"ids": ids, "x": x}, out),
        loss=keras.losses.MeanSquaredError(),
        features=["ids", "x"],
        label="y",
        sparse_variables=["emb/embeddings"],
    )


def big_embedding(rows: str = "10", dim: str = "3") -> ModelSpec:
    """`with_embedding` with a table of `rows` x `dim`: big enough to outgrow a gRPC message."""
    import keras

    ids = keras.Input(shape=(), dtype="int64", name="ids")
    x = keras.Input(shape=(2,), dtype="float32", name="x")
    emb = keras.layers.Embedding(int(rows), int(dim), name="emb")(ids)
    h = keras.layers.Concatenate()([emb, x])
    out = keras.layers.Dense(1, name="value")(h)
    return ModelSpec(
        model=keras.Model({"ids": ids, "x": x}, out),
        loss=keras.losses.MeanSquaredError(),
        features=["ids", "x"],
        label="y",
        sparse_variables=["emb/embeddings"],
    )


def with_dropout() -> ModelSpec:
    import keras

    x = keras.Input(shape=(4,), dtype="float32", name="x")
    out = keras.layers.Dense(2, name="out")(keras.layers.Dropout(0.5)(x))
    return ModelSpec(
        model=keras.Model(x, out), loss=keras.losses.MeanSquaredError(), features=["x"], label="y"
    )


def with_batchnorm() -> ModelSpec:
    import keras

    x = keras.Input(shape=(4,), dtype="float32", name="x")
    out = keras.layers.Dense(2, name="out")(keras.layers.BatchNormalization(name="bn")(x))
    return ModelSpec(
        model=keras.Model(x, out), loss=keras.losses.MeanSquaredError(), features=["x"], label="y"
    )


def bad_sparse() -> ModelSpec:
    spec = tiny()
    spec.sparse_variables = ["probabilities/bias"]
    return spec


def raises() -> ModelSpec:
    raise RuntimeError("boom")


def not_a_spec() -> int:
    return 42
