"""The registration plan: which shard holds which variable (pure)."""

from __future__ import annotations

import numpy as np
import pytest
from mlmesh import keys
from mlmesh.errors import InvalidArgument

from trainer_svc.core.placement import chunk_specs, dense_by_shard, plan_registration

pytestmark = pytest.mark.unit

VARIABLES = {
    "conv2d/kernel": np.arange(3 * 3 * 1 * 4, dtype=np.float32).reshape(3, 3, 1, 4),
    "conv2d/bias": np.zeros(4, np.float32),
    "dense/kernel": np.ones((8, 2), np.float32),
    "emb/embeddings": np.arange(7 * 3, dtype=np.float32).reshape(7, 3),
}


def test_dense_variables_go_whole_to_their_hashed_shard() -> None:
    plan = plan_registration(VARIABLES, [], 3)
    for shard, specs in enumerate(plan):
        for spec in specs:
            assert keys.dense_shard(spec.name, 3) == shard
            assert not spec.row_sharded
            np.testing.assert_array_equal(spec.value, VARIABLES[spec.name])
    assert sorted(s.name for specs in plan for s in specs) == sorted(VARIABLES)


def test_sparse_variable_is_registered_on_every_shard_with_its_rows() -> None:
    plan = plan_registration(VARIABLES, ["emb/embeddings"], 3)
    for shard in range(3):
        [emb] = [s for s in plan[shard] if s.name == "emb/embeddings"]
        assert emb.row_sharded and emb.shape == (7, 3)
        # Global rows shard, shard+3, ... in local order.
        np.testing.assert_array_equal(emb.value, VARIABLES["emb/embeddings"][shard::3])
    assert sum(len(s.value) for p in plan for s in p if s.name == "emb/embeddings") == 7


def test_one_shard_holds_everything() -> None:
    [only] = plan_registration(VARIABLES, ["emb/embeddings"], 1)
    assert {s.name for s in only} == set(VARIABLES)


def test_unknown_sparse_variable_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="sparse variable 'nope' is not a trainable variable"):
        plan_registration(VARIABLES, ["nope"], 2)


def test_sparse_variable_must_be_two_dimensional() -> None:
    with pytest.raises(InvalidArgument, match=r"has shape \[3, 3, 1, 4\]; row sharding needs 2-D"):
        plan_registration(VARIABLES, ["conv2d/kernel"], 2)


def test_dense_by_shard_agrees_with_the_plan() -> None:
    plan = plan_registration(VARIABLES, ["emb/embeddings"], 2)
    grouped = dense_by_shard([n for n in VARIABLES if n != "emb/embeddings"], 2)
    for shard in range(2):
        assert sorted(grouped[shard]) == sorted(s.name for s in plan[shard] if not s.row_sharded)


def test_chunks_respect_the_byte_bound_and_keep_order() -> None:
    [specs] = plan_registration({f"v{i}": np.zeros(100, np.float32) for i in range(10)}, [], 1)
    chunks = chunk_specs(specs, max_bytes=1000)  # 400 bytes each: two per chunk
    assert [len(c) for c in chunks] == [2, 2, 2, 2, 2]
    assert [s.name for c in chunks for s in c] == [s.name for s in specs]
    # A variable above the bound travels alone.
    assert [len(c) for c in chunk_specs(specs[:3], max_bytes=100)] == [1, 1, 1]
