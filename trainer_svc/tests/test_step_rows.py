"""Which rows a batch reads: one derived call per distinct input tensor, not per table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from mlmesh.model import ModelSpec

from trainer_svc.core import step, tfmodel
from trainer_svc.core.spec import JobSpec
from trainer_svc.core.step import StepRunner

pytestmark = pytest.mark.unit

MOVIELENS = JobSpec(
    model="mlmesh.models.movielens_mf:build",
    model_args={"dim": "4"},
    train_dataset="movielens-train",
    epochs=1,
    batch_size=4,
    model_name="movielens",
)


def test_tables_looked_up_with_the_same_input_share_one_call_per_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    derive = step._sub_model_fn

    def counting(sub: Any) -> Callable[[Any], Any]:
        fn, index = derive(sub), len(calls)
        calls.append(0)

        def call(x: Any) -> Any:
            calls[index] += 1
            return fn(x)

        return call

    monkeypatch.setattr(step, "_sub_model_fn", counting)
    ms = tfmodel.build(MOVIELENS)
    runner = StepRunner(ms, tfmodel.input_specs(ms))
    # Four tables, two inputs: user embedding + user bias read `user`, the item ones `item`.
    assert len(calls) == 2
    x = runner.inputs({"user": np.array([5, 3, 5]), "item": np.array([7, 7, 0])})
    rows = runner.rows_needed(x)
    assert calls == [1, 1]
    assert list(rows) == runner.sparse_names
    assert rows["user_embedding/embeddings"].tolist() == rows["user_bias/embeddings"].tolist() == [3, 5]
    assert rows["item_embedding/embeddings"].tolist() == rows["item_bias/embeddings"].tolist() == [0, 7]


def shared_table() -> ModelSpec:
    """One Embedding called on two inputs ("a", "b"), another on "c" alone."""
    import keras

    a, b, c = (keras.Input(shape=(), dtype="int64", name=n) for n in "abc")
    shared = keras.layers.Embedding(10, 2, name="shared")
    h = keras.layers.Concatenate()([shared(a), shared(b), keras.layers.Embedding(10, 2, name="own")(c)])
    return ModelSpec(
        model=keras.Model({"a": a, "b": b, "c": c}, keras.layers.Dense(1, name="out")(h)),
        loss=keras.losses.MeanSquaredError(),
        features=["a", "b", "c"],
        label="y",
        sparse_variables=["shared/embeddings", "own/embeddings"],
    )


def test_a_table_looked_up_from_several_inputs_pulls_all_its_rows() -> None:
    ms = tfmodel.build(
        JobSpec(model=f"{__name__}:shared_table", train_dataset="d", epochs=1, batch_size=2, model_name="m")
    )
    runner = StepRunner(ms, tfmodel.input_specs(ms))
    x = runner.inputs({"a": np.array([1, 1]), "b": np.array([8, 9]), "c": np.array([4, 2])})
    rows = runner.rows_needed(x)
    assert rows["shared/embeddings"].tolist() == list(range(10))  # not only a's [1]
    assert rows["own/embeddings"].tolist() == [2, 4]
