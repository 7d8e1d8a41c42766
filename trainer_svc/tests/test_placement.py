"""The registration plan: which shard holds which variable (pure)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from mlmesh import keys
from mlmesh.errors import FailedPrecondition, InvalidArgument

from trainer_svc.core.placement import (
    Registered,
    chunk_specs,
    layout_from_shards,
    partitioned_names,
    plan_registration,
)
from trainer_svc.core.types import ShardInfo, ShardVariable, VariableSpec

pytestmark = pytest.mark.unit

VARIABLES = {
    "conv2d/kernel": np.arange(3 * 3 * 1 * 4, dtype=np.float32).reshape(3, 3, 1, 4),
    "conv2d/bias": np.zeros(4, np.float32),
    "dense/kernel": np.ones((8, 2), np.float32),
    "emb/embeddings": np.arange(7 * 3, dtype=np.float32).reshape(7, 3),
}


def test_dense_variables_go_whole_to_shards_balancing_bytes() -> None:
    plan = plan_registration(VARIABLES, [], 3)
    sizes = {name: v.nbytes for name, v in VARIABLES.items()}
    expected = keys.balance(sizes, 3)
    for shard, specs in enumerate(plan):
        for spec in specs:
            assert expected[spec.name] == shard
            assert not spec.row_sharded
            np.testing.assert_array_equal(spec.value, VARIABLES[spec.name])
    assert sorted(s.name for specs in plan for s in specs) == sorted(VARIABLES)
    # The three biggest variables land on three different shards.
    assert len({expected[n] for n in ("conv2d/kernel", "emb/embeddings", "dense/kernel")}) == 3


def test_a_variable_the_shards_already_hold_whole_stays_where_it_is() -> None:
    plan = plan_registration(VARIABLES, [], 3, registered={"dense/kernel": Registered(False, 2)})
    assert "dense/kernel" in [s.name for s in plan[2]]


def test_sparse_variable_is_registered_on_every_shard_with_its_hashed_rows() -> None:
    plan = plan_registration(VARIABLES, ["emb/embeddings"], 3)
    rows = keys.row_placement(7, 3, keys.RowLayout.HASH)
    for shard in range(3):
        [emb] = [s for s in plan[shard] if s.name == "emb/embeddings"]
        assert emb.row_sharded and emb.shape == (7, 3) and emb.layout == "hash"
        np.testing.assert_array_equal(emb.value, VARIABLES["emb/embeddings"][rows.global_rows(shard)])
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


def test_chunks_respect_the_byte_bound_and_keep_order() -> None:
    [specs] = plan_registration({f"v{i}": np.zeros(100, np.float32) for i in range(10)}, [], 1)
    chunks = chunk_specs(specs, max_bytes=1000)  # 400 bytes each: two per chunk
    assert [len(c) for c in chunks] == [2, 2, 2, 2, 2]
    assert [s.name for c in chunks for s in c] == [s.name for s in specs]
    # A variable above the bound travels alone.
    assert [len(c) for c in chunk_specs(specs[:3], max_bytes=100)] == [1, 1, 1]


def infos_of(plan: list[list[VariableSpec]], job_id: str = "j") -> list[ShardInfo]:
    """What the shards report (GetShardInfo) after registering `plan`."""
    n = len(plan)
    return [
        ShardInfo(i, n, [ShardVariable(job_id, v.name, v.shape, v.row_sharded, v.layout) for v in specs])
        for i, specs in enumerate(plan)
    ]


def test_large_dense_variables_are_partitioned_by_the_threshold() -> None:
    # dense/kernel is 64 bytes, conv2d/kernel 144: a 100-byte threshold partitions only the latter.
    names = partitioned_names(VARIABLES, ["emb/embeddings"], 2, min_partition_bytes=100)
    assert names == ["conv2d/kernel"]
    assert partitioned_names(VARIABLES, ["emb/embeddings"], 2) == []  # default 256 KiB: none
    assert partitioned_names(VARIABLES, ["emb/embeddings"], 1, min_partition_bytes=0) == []


def test_what_the_shards_already_hold_wins_over_the_threshold() -> None:
    registered = {"conv2d/kernel": Registered(False, 0), "dense/kernel": Registered(True)}
    names = partitioned_names(VARIABLES, [], 2, min_partition_bytes=100, registered=registered)
    assert names == ["dense/kernel"]


def test_partitioned_variable_is_registered_on_every_shard_with_its_rows() -> None:
    plan = plan_registration(VARIABLES, [], 3, partitioned=["dense/kernel"])
    for shard in range(3):
        [kernel] = [s for s in plan[shard] if s.name == "dense/kernel"]
        assert kernel.row_sharded and kernel.shape == (8, 2) and kernel.layout == "blocks"
        lo, hi = shard * 8 // 3, (shard + 1) * 8 // 3
        np.testing.assert_array_equal(kernel.value, VARIABLES["dense/kernel"][lo:hi])


def test_layout_read_from_the_shards_agrees_with_the_plan() -> None:
    dense = [n for n in VARIABLES if n != "emb/embeddings"]
    plan = plan_registration(VARIABLES, ["emb/embeddings"], 2, partitioned=["conv2d/kernel"])
    layout = layout_from_shards("j", dense, ["emb/embeddings"], infos_of(plan))
    assert list(layout.partitioned) == ["conv2d/kernel"] and list(layout.sparse) == ["emb/embeddings"]
    for shard in range(2):
        assert sorted(layout.whole[shard]) == sorted(s.name for s in plan[shard] if not s.row_sharded)
    # Each shard's block of rows concatenates back into the whole variable.
    full = VARIABLES["conv2d/kernel"]
    slices = [full[layout.global_rows("conv2d/kernel", s)] for s in range(2)]
    for shard in range(2):
        np.testing.assert_array_equal(slices[shard], layout.part("conv2d/kernel", full, shard))
    np.testing.assert_array_equal(layout.assemble("conv2d/kernel", slices), full)


def test_layout_ignores_other_jobs() -> None:
    plan = plan_registration(VARIABLES, [], 2, partitioned=["dense/kernel"])
    other = plan_registration(VARIABLES, [], 2)
    infos = [
        dataclasses.replace(mine, variables=[*mine.variables, *theirs.variables])
        for mine, theirs in zip(infos_of(plan, "j"), infos_of(other, "k"), strict=True)
    ]
    layout = layout_from_shards("j", list(VARIABLES), [], infos)
    assert list(layout.partitioned) == ["dense/kernel"]


def test_layout_refuses_a_missing_variable() -> None:
    plan = plan_registration(VARIABLES, [], 2)
    with pytest.raises(FailedPrecondition, match="variable 'nope' of job 'j' is not registered on shard 0"):
        layout_from_shards("j", [*VARIABLES, "nope"], [], infos_of(plan))


def test_layout_refuses_shards_out_of_order() -> None:
    infos = infos_of(plan_registration(VARIABLES, [], 2))
    with pytest.raises(FailedPrecondition, match="position 0 of 2 says it is shard 1 of 2"):
        layout_from_shards("j", list(VARIABLES), [], infos[::-1])


def test_layout_refuses_a_sparse_variable_held_dense() -> None:
    plan = plan_registration(VARIABLES, [], 2)  # registered without sparse_variables
    with pytest.raises(FailedPrecondition, match="variable 'emb/embeddings' of job 'j' is dense on shard"):
        layout_from_shards("j", [], ["emb/embeddings"], infos_of(plan))


def test_fashion_cnn_bytes_are_balanced_over_two_shards() -> None:
    from trainer_svc.core import tfmodel
    from trainer_svc.core.spec import JobSpec

    spec = JobSpec(
        model="mlmesh.models.fashion_cnn:build", train_dataset="d", epochs=1, batch_size=8, model_name="m"
    )
    values = tfmodel.variable_values(tfmodel.build(spec))
    total = sum(v.nbytes for v in values.values())

    def shares(partitioned: list[str]) -> list[float]:
        plan = plan_registration(values, [], 2, partitioned)
        return [sum(s.value.nbytes for s in specs) / total for specs in plan]

    # Unpartitioned, the 1600x128 kernel (91% of the parameters) alone unbalances the shards.
    assert max(shares([])) > 0.9
    partitioned = partitioned_names(values, [], 2)
    assert partitioned == ["dense/kernel"] and values["dense/kernel"].shape == (1600, 128)
    for share in shares(partitioned):
        assert 0.45 <= share <= 0.55  # blocks of the kernel, the rest balanced by size
