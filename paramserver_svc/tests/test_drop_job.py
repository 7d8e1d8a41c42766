"""DropJob: a finished job's state leaves the shard's memory after a final checkpoint, which
stays on disk (a restarted shard leaves it there; LoadCheckpoint brings it back). Idempotent;
refused while workers are joined or pushes staged, unless forced; later calls for the job are
told it was dropped."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from mlmesh import tensor
from mlmesh.errors import FailedPrecondition, NotFound
from mlmesh.paramserver.v1 import paramserver_pb2 as pb

from paramserver_svc.core import checkpoint
from paramserver_svc.core.shard import Shard
from paramserver_svc.core.specs import InitSpec, JobConfig, Mode, OptimizerConfig, VarSpec
from paramserver_svc.tests.conftest import ShardClient, expect_status, sgd, var

pytestmark = pytest.mark.unit

F32 = np.dtype(np.float32)
SGD1 = OptimizerConfig.parse("sgd", 1.0)
SPECS = [(VarSpec("w", F32, (2,)), InitSpec("zeros"))]
G = {"w": np.ones(2, F32)}


class FakeTime:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def trained(tmp_path: Path, config: JobConfig | None = None) -> tuple[Shard, FakeTime]:
    now = FakeTime()
    shard = Shard(0, 1, tmp_path, clock=now)
    shard.register("j", SPECS, SGD1, config)
    shard.join("j", "w0")
    shard.push("j", "w0", 0, G, [])
    shard.leave("j", "w0")
    return shard, now


def test_drop_writes_a_final_checkpoint_frees_the_job_and_is_idempotent(tmp_path: Path) -> None:
    shard, _ = trained(tmp_path)
    result = shard.drop("j")
    assert result.dropped and not result.already and result.version == 1
    assert result.checkpoint == checkpoint.job_checkpoints(tmp_path, "j")[0]
    assert shard.store.find("j") is None and shard.info() == [] and shard.dropped_jobs() == ["j"]
    again = shard.drop("j")
    assert not again.dropped and again.already
    unknown = shard.drop("never-registered")
    assert not unknown.dropped and not unknown.already


def test_calls_for_a_dropped_job_are_told_it_was_dropped(tmp_path: Path) -> None:
    shard, _ = trained(tmp_path)
    shard.drop("j")
    for call in (
        lambda: shard.pull("j", ["w"], []),
        lambda: shard.push("j", "w0", 1, G, []),
        lambda: shard.join("j", "w1"),
        lambda: shard.leave("j", "w0"),
        lambda: shard.save("j"),
    ):
        with pytest.raises(NotFound, match="job 'j' was dropped from this shard"):
            call()
    # Registering it again would silently restart a finished job from its initial values.
    with pytest.raises(FailedPrecondition, match=r"'j' was dropped .* cannot be registered again"):
        shard.register("j", SPECS, SGD1)


def test_joined_workers_refuse_the_drop_unless_forced(tmp_path: Path) -> None:
    shard, now = trained(tmp_path)
    shard.join("j", "w1")
    with pytest.raises(FailedPrecondition, match=r"still has 1 joined worker\(s\) on this shard \('w1'\)"):
        shard.drop("j")
    assert shard.store.find("j") is not None  # nothing changed
    now.t += 11  # w1's lease (10 s) ran out: it no longer holds the job
    assert shard.drop("j").dropped


def test_force_drops_a_job_with_joined_workers_and_staged_pushes(tmp_path: Path) -> None:
    shard = Shard(0, 1, tmp_path)
    shard.register("j", SPECS, SGD1, JobConfig.parse(Mode.ASYNC, exactly_once=True))
    shard.join("j", "w0")
    shard.push("j", "w0", 0, G, [], lease_id="L1", task_id="j/e0/p0")
    shard.leave("j", "w0")
    with pytest.raises(FailedPrecondition, match="staged under 1 uncommitted lease"):
        shard.drop("j")
    shard.join("j", "w0")
    assert shard.drop("j", force=True).dropped
    with pytest.raises(NotFound, match="dropped"):
        shard.commit_lease("j", "L1", "j/e0/p0")


def test_a_restarted_shard_leaves_a_dropped_job_on_disk_and_load_brings_it_back(tmp_path: Path) -> None:
    shard, _ = trained(tmp_path)
    shard.register("other", SPECS, SGD1)
    shard.save("other")
    shard.drop("j")
    restarted = Shard(0, 1, tmp_path)
    loaded = restarted.load_all()
    assert [name for name, _ in loaded] == [checkpoint.job_checkpoints(tmp_path, "other")[0].name]
    assert restarted.store.find("j") is None and restarted.dropped_jobs() == ["j"]
    with pytest.raises(NotFound, match="job 'j' was dropped"):
        restarted.pull("j", ["w"], [])
    # An explicit load (a later export, say) restores the final state and un-drops it.
    assert restarted.load("j") == 1
    np.testing.assert_array_equal(restarted.pull("j", ["w"], []).dense["w"], [-1, -1])
    assert restarted.dropped_jobs() == []
    assert not (tmp_path / f"{checkpoint.job_stem('j')}{checkpoint.DROPPED_SUFFIX}").exists()
    assert [name for name, _ in Shard(0, 1, tmp_path).load_all()] == [
        checkpoint.job_checkpoints(tmp_path, j)[0].name for j in ("j", "other")
    ]


def test_a_failed_final_checkpoint_drops_nothing(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("not a directory")
    shard = Shard(0, 1, target)
    shard.register("j", SPECS, SGD1)
    with pytest.raises(FailedPrecondition, match="job 'j' was not dropped: cannot write checkpoint"):
        shard.drop("j")
    assert shard.pull("j", ["w"], []).version == 0 and shard.dropped_jobs() == []


def test_a_push_racing_the_drop_is_applied_before_it_or_refused(tmp_path: Path) -> None:
    """Never applied to the freed state after the final checkpoint was taken."""
    shard = Shard(0, 1, tmp_path)
    shard.register("j", SPECS, SGD1)
    shard.join("j", "w0")
    outcomes: list[str] = []

    def pusher() -> None:
        for step in range(2000):
            try:
                shard.push("j", "w0", step, G, [])
            except NotFound:
                outcomes.append("refused")
                return
        outcomes.append("done")

    t = threading.Thread(target=pusher)
    t.start()
    result = shard.drop("j", force=True)
    t.join(30)
    restored = Shard(0, 1, tmp_path)
    assert restored.load("j") == result.version
    # Every push the final checkpoint did not hold was refused (SGD, lr 1: w = -version).
    np.testing.assert_array_equal(restored.pull("j", ["w"], []).dense["w"], [-result.version] * 2)
    assert outcomes in (["refused"], ["done"])


def test_drop_job_over_grpc(client: ShardClient) -> None:
    client.stub.RegisterVariables(
        pb.RegisterVariablesRequest(job_id="j", variables=[var("w", [2])], optimizer=sgd()), timeout=10
    )
    client.stub.JoinJob(pb.JoinJobRequest(job_id="j", worker_id="w0"), timeout=10)
    expect_status(
        grpc.StatusCode.FAILED_PRECONDITION, client.stub.DropJob, pb.DropJobRequest(job_id="j"),
        "still has 1 joined worker(s)", "'w0'", "force",
    )  # fmt: skip
    resp = client.stub.DropJob(pb.DropJobRequest(job_id="j", force=True), timeout=10)
    assert resp.dropped and resp.checkpoint_path.endswith(".npz")
    again = client.stub.DropJob(pb.DropJobRequest(job_id="j"), timeout=10)
    assert not again.dropped and again.already_dropped
    push = pb.PushRequest(job_id="j", worker_id="w0", step=0, dense_grads={"w": tensor.to_proto(G["w"])})
    expect_status(grpc.StatusCode.NOT_FOUND, client.stub.Push, push, "job 'j' was dropped from this shard")
    expect_status(
        grpc.StatusCode.NOT_FOUND, client.stub.Pull, pb.PullRequest(job_id="j", dense=["w"]), "was dropped"
    )
    info = client.stub.GetShardInfo(pb.GetShardInfoRequest(), timeout=10)
    assert list(info.dropped_jobs) == ["j"] and not info.jobs
    expect_status(
        grpc.StatusCode.INVALID_ARGUMENT, client.stub.DropJob, pb.DropJobRequest(job_id=""), "job_id is empty"
    )
