"""The shipped MovieLens model in the worker's step: each table's rows derived and pushed sparse."""

from __future__ import annotations

import numpy as np
import pytest
from mlmesh.models.movielens_mf import SPARSE_VARIABLES

from trainer_svc.core import tfmodel
from trainer_svc.core.spec import JobSpec
from trainer_svc.core.step import StepRunner

pytestmark = pytest.mark.unit

SPEC = JobSpec(
    model="mlmesh.models.movielens_mf:build",
    model_args={"dim": "4"},
    train_dataset="movielens-train",
    epochs=1,
    batch_size=4,
    model_name="movielens",
)


def test_rows_needed_finds_the_ids_of_every_table_and_the_step_returns_only_those_rows() -> None:
    ms = tfmodel.build(SPEC)
    runner = StepRunner(ms, tfmodel.input_specs(ms))
    assert runner.sparse_names == list(SPARSE_VARIABLES)
    assert runner.dense_names == ["global_bias/bias"]
    batch = {
        "user": np.array([5, 3, 5, 942]),
        "item": np.array([7, 7, 0, 1681]),
        "rating": np.array([3, 4, 5, 1], np.float32),
    }
    x = runner.inputs(batch)
    rows = runner.rows_needed(x)
    users, items = [3, 5, 942], [0, 7, 1681]
    assert {name: r.tolist() for name, r in rows.items()} == {
        "user_embedding/embeddings": users,
        "item_embedding/embeddings": items,
        "user_bias/embeddings": users,
        "item_bias/embeddings": items,
    }
    values = tfmodel.variable_values(ms)
    result = runner.compute(
        {"global_bias/bias": values["global_bias/bias"]},
        {name: (r, values[name][r]) for name, r in rows.items()},
        x,
        batch["rating"],
    )
    assert np.isfinite(result.loss)
    for name, r in rows.items():
        got_rows, grad = result.row_grads[name]
        np.testing.assert_array_equal(got_rows, r)
        assert grad.shape == (len(r), values[name].shape[1])
        assert np.all(np.any(grad != 0, axis=1)), name  # every touched row learns something
    assert result.dense_grads["global_bias/bias"].shape == (1,)
