"""`examples.tabular.model:build` — a churn classifier on the churn table.

Numeric columns are standardized inside the model (fixed constants, so no
state to train or ship separately); the region goes through an embedding
that the parameter server keeps row-sharded: workers pull and push only the
regions a batch contains.
"""

from __future__ import annotations

from mlmesh.model import ModelSpec

from examples.tabular.data import LABEL, NUM_REGIONS, NUMERIC, NUMERIC_MEAN, NUMERIC_STD, REGION

EMBEDDING = "region_embedding/embeddings"


def build(hidden_units: str = "32", embedding_dim: str = "8") -> ModelSpec:
    """model_args: hidden_units, embedding_dim (strings, as a JobSpec carries them)."""
    import keras

    units, dim = int(hidden_units), int(embedding_dim)
    numeric = keras.Input(shape=(len(NUMERIC_MEAN),), dtype="float32", name=NUMERIC)
    region = keras.Input(shape=(), dtype="int64", name=REGION)
    scaled = keras.layers.Normalization(
        mean=list(NUMERIC_MEAN), variance=[s * s for s in NUMERIC_STD], name="standardize"
    )(numeric)
    embedded = keras.layers.Embedding(NUM_REGIONS, dim, name="region_embedding")(region)
    x = keras.layers.Concatenate()([scaled, embedded])
    x = keras.layers.Dense(units, activation="relu")(x)
    x = keras.layers.Dense(units, activation="relu")(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="churn_probability")(x)
    model = keras.Model({NUMERIC: numeric, REGION: region}, out, name="churn")
    return ModelSpec(
        model=model,
        loss=keras.losses.BinaryCrossentropy(),
        features=[NUMERIC, REGION],
        label=LABEL,
        metrics=[
            lambda: keras.metrics.BinaryAccuracy(name="accuracy"),
            lambda: keras.metrics.AUC(name="auc"),
        ],
        input_dtypes={NUMERIC: "float32", REGION: "int64"},
        sparse_variables=[EMBEDDING],
    )
