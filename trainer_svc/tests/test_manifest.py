"""The coordinator's checkpoint manifest, from what the shards report (pure)."""

from __future__ import annotations

import pytest
from mlmesh.errors import FailedPrecondition

from trainer_svc.core.manifest import build_manifest
from trainer_svc.core.types import ShardCheckpoint, ShardInfo, ShardJob

pytestmark = pytest.mark.unit


def shard(i: int, mode: str, *clocks: int) -> ShardInfo:
    ckpts = [ShardCheckpoint(f"/ckpt/{i}/{c}.npz", c * 10, c) for c in clocks]
    return ShardInfo(i, 2, [], {"j": ShardJob(mode, max(clocks, default=0), 0, 0, ckpts)})


def test_sync_manifest_picks_the_newest_step_every_shard_holds() -> None:
    manifest = build_manifest("j", [shard(0, "sync", 300, 200), shard(1, "sync", 200, 100)])
    assert manifest["consistent"] and manifest["step"] == 200
    assert [s["path"] for s in manifest["shards"]] == ["/ckpt/0/200.npz", "/ckpt/1/200.npz"]


def test_sync_manifest_without_a_common_step_is_not_consistent() -> None:
    manifest = build_manifest("j", [shard(0, "sync", 300), shard(1, "sync", 200)])
    assert not manifest["consistent"] and manifest["step"] is None
    assert [s["clock"] for s in manifest["shards"]] == [300, 200]  # each shard's newest


def test_async_manifest_lists_each_shards_newest() -> None:
    manifest = build_manifest("j", [shard(0, "async", 5, 4), shard(1, "async", 9)])
    assert not manifest["consistent"] and manifest["consistency"] == "async"
    assert [s["version"] for s in manifest["shards"]] == [50, 90]


def test_a_shard_without_a_checkpoint_is_named() -> None:
    with pytest.raises(FailedPrecondition, match="shard 1 has no checkpoint of job 'j'"):
        build_manifest("j", [shard(0, "sync", 1), shard(1, "sync")])
