"""Exactly-once jobs on one shard: pushes staged per task lease, applied at commit, dropped
at abort, each task committed once, the ledger surviving a checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlmesh.errors import FailedPrecondition, InvalidArgument, ResourceExhausted

from paramserver_svc.core.shard import RowValues, Shard
from paramserver_svc.core.specs import InitSpec, JobConfig, Mode, OptimizerConfig, VarSpec

pytestmark = pytest.mark.unit

F32 = np.dtype(np.float32)
SGD1 = OptimizerConfig.parse("sgd", 1.0)


def make(tmp_path: Path, **kw: object) -> Shard:
    shard = Shard(0, 1, tmp_path, **kw)  # type: ignore[arg-type]
    shard.register(
        "j",
        [
            (VarSpec("w", F32, (2,)), InitSpec("zeros")),
            (VarSpec("emb", F32, (4, 2), row_sharded=True), InitSpec("zeros")),
        ],
        SGD1,
        JobConfig.parse(Mode.ASYNC, exactly_once=True),
    )
    return shard


def g(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full(2, value, dtype=np.float32)}


def w(shard: Shard) -> np.ndarray:
    return shard.pull("j", ["w"], []).dense["w"]


def test_pushes_wait_for_their_lease_to_commit_then_apply_in_order(tmp_path: Path) -> None:
    shard = make(tmp_path)
    rows = [RowValues("emb", np.array([3]), np.ones((1, 2), np.float32))]
    assert shard.push("j", "w0", 0, g(1.0), rows, "L1", "j/e0/p0").applied
    assert shard.push("j", "w0", 1, g(2.0), [], "L1", "j/e0/p0").applied
    np.testing.assert_array_equal(w(shard), [0, 0])  # staged, not visible
    [info] = shard.jobs_info()
    assert [(s.lease_id, s.task_id, s.pushes) for s in info.staged] == [("L1", "j/e0/p0", 2)]
    applied, already, _ = shard.commit_lease("j", "L1", "j/e0/p0")
    assert (applied, already) == (2, False)
    np.testing.assert_array_equal(w(shard), [-3, -3])
    emb = shard.pull("j", [], [RowValues("emb", np.array([3]))]).rows[0].values
    np.testing.assert_array_equal(emb, [[-1, -1]])
    # Committing again is idempotent and applies nothing.
    assert shard.commit_lease("j", "L1", "j/e0/p0")[:2] == (0, True)
    np.testing.assert_array_equal(w(shard), [-3, -3])
    [info] = shard.jobs_info()
    assert info.applied_by_task == {"j/e0/p0": 2} and info.leases_committed == 1 and not info.staged


def test_an_aborted_lease_is_discarded_and_takes_no_more_pushes(tmp_path: Path) -> None:
    shard = make(tmp_path)
    shard.push("j", "w0", 0, g(5.0), [], "dead", "j/e0/p1")
    assert shard.abort_lease("j", "dead") == 1
    assert shard.abort_lease("j", "dead") == 0  # idempotent
    with pytest.raises(FailedPrecondition, match="lease 'dead' was aborted"):
        shard.push("j", "w0", 1, g(5.0), [], "dead", "j/e0/p1")
    with pytest.raises(FailedPrecondition, match="aborted on this shard; it cannot commit"):
        shard.commit_lease("j", "dead", "j/e0/p1")
    # The task's second attempt, under a new lease, commits normally.
    shard.push("j", "w1", 0, g(1.0), [], "again", "j/e0/p1")
    assert shard.commit_lease("j", "again", "j/e0/p1")[0] == 1
    np.testing.assert_array_equal(w(shard), [-1, -1])
    [info] = shard.jobs_info()
    assert (info.leases_committed, info.leases_aborted) == (1, 1)


def test_a_task_commits_once_whichever_lease_asks(tmp_path: Path) -> None:
    shard = make(tmp_path)
    shard.push("j", "w0", 0, g(1.0), [], "A", "j/e0/p2")
    shard.push("j", "w1", 0, g(1.0), [], "B", "j/e0/p2")
    shard.commit_lease("j", "A", "j/e0/p2")
    with pytest.raises(FailedPrecondition, match="already committed by lease 'A'"):
        shard.commit_lease("j", "B", "j/e0/p2")
    np.testing.assert_array_equal(w(shard), [-1, -1])
    with pytest.raises(FailedPrecondition, match="was committed on this shard; it cannot abort"):
        shard.abort_lease("j", "A")


@pytest.mark.parametrize(
    ("lease", "task", "error", "message"),
    [
        ("", "j/e0/p0", InvalidArgument, "every push names its task's lease_id and task_id"),
        ("L", "", InvalidArgument, "every push names its task's lease_id and task_id"),
    ],
)
def test_pushes_of_an_exactly_once_job_must_name_their_lease(
    tmp_path: Path, lease: str, task: str, error: type[Exception], message: str
) -> None:
    shard = make(tmp_path)
    with pytest.raises(error, match=message):
        shard.push("j", "w0", 0, g(1.0), [], lease, task)


def test_a_lease_is_for_one_task(tmp_path: Path) -> None:
    shard = make(tmp_path)
    shard.push("j", "w0", 0, g(1.0), [], "L", "j/e0/p0")
    with pytest.raises(InvalidArgument, match="is for task 'j/e0/p0', not 'j/e0/p9'"):
        shard.push("j", "w0", 1, g(1.0), [], "L", "j/e0/p9")
    with pytest.raises(InvalidArgument, match="is for task 'j/e0/p0', not 'j/e0/p9'"):
        shard.commit_lease("j", "L", "j/e0/p9")


def test_staged_bytes_are_bounded(tmp_path: Path) -> None:
    shard = make(tmp_path, max_staged_bytes=20)
    shard.push("j", "w0", 0, g(1.0), [], "L", "j/e0/p0")  # 8 bytes
    shard.push("j", "w0", 1, g(1.0), [], "L", "j/e0/p0")  # 16
    with pytest.raises(ResourceExhausted, match="--max-staged-bytes"):
        shard.push("j", "w0", 2, g(1.0), [], "L", "j/e0/p0")


def test_a_plain_job_refuses_leases_and_exactly_once_needs_async(tmp_path: Path) -> None:
    shard = Shard(0, 1, tmp_path)
    shard.register("plain", [(VarSpec("w", F32, (2,)), InitSpec("zeros"))], SGD1)
    with pytest.raises(InvalidArgument, match="is not exactly-once"):
        shard.push("plain", "w0", 0, g(1.0), [], "L", "t")
    with pytest.raises(FailedPrecondition, match="is not exactly-once"):
        shard.commit_lease("plain", "L", "t")
    with pytest.raises(InvalidArgument, match="exactly_once needs async consistency"):
        JobConfig.parse(Mode.SYNC, exactly_once=True)


def test_the_ledger_survives_a_checkpoint_and_staged_pushes_do_not(tmp_path: Path) -> None:
    shard = make(tmp_path)
    shard.push("j", "w0", 0, g(1.0), [], "L1", "j/e0/p0")
    shard.commit_lease("j", "L1", "j/e0/p0")
    shard.push("j", "w0", 1, g(1.0), [], "L2", "j/e0/p1")  # staged at the checkpoint
    shard.save("j")
    restored = Shard(0, 1, tmp_path)
    restored.load_all()
    [info] = restored.jobs_info()
    assert info.config.exactly_once and info.applied_by_task == {"j/e0/p0": 1} and not info.staged
    assert restored.commit_lease("j", "L1", "j/e0/p0")[:2] == (0, True)
    with pytest.raises(FailedPrecondition, match="already committed"):
        restored.commit_lease("j", "other", "j/e0/p0")
    # L2's staged pushes were lost with the process: its commit applies nothing.
    assert restored.commit_lease("j", "L2", "j/e0/p1")[0] == 0
    np.testing.assert_array_equal(w(restored), [-1, -1])
