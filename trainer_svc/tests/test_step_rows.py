"""Which rows a batch reads: one derived call per distinct input tensor, not per table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

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
