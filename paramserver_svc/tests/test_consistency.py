"""Consistency models on one shard, without transport: SYNC barriers, BOUNDED staleness,
leases, elastic membership and what a restarted shard does with the workers' clocks.

The shard's clock is a fake one the test moves, so lease expiry is exact and instant.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlmesh.errors import FailedPrecondition, InvalidArgument

from paramserver_svc.core.shard import RowValues, Shard
from paramserver_svc.core.specs import InitSpec, JobConfig, Mode, OptimizerConfig, VarSpec

pytestmark = pytest.mark.unit

F32 = np.dtype(np.float32)
SGD1 = OptimizerConfig.parse("sgd", 1.0)
LEASE = 5.0


class FakeTime:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(tmp_path: Path, mode: Mode, staleness: int = 0, **kw: object) -> tuple[Shard, FakeTime]:
    now = FakeTime()
    shard = Shard(0, 1, tmp_path, clock=now)
    config = JobConfig.parse(mode, staleness, LEASE, **kw)  # type: ignore[arg-type]
    shard.register(
        "j",
        [
            (VarSpec("w", F32, (2,)), InitSpec("zeros")),
            (VarSpec("emb", F32, (4, 2), row_sharded=True), InitSpec("zeros")),
        ],
        SGD1,
        config,
    )
    return shard, now


def g(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full(2, value, dtype=np.float32)}


def w(shard: Shard) -> np.ndarray:
    return shard.pull("j", ["w"], []).dense["w"]


# --- SYNC -----------------------------------------------------------------------------------


def test_sync_applies_the_mean_of_every_live_workers_push_once_per_step(tmp_path: Path) -> None:
    shard, _ = make(tmp_path, Mode.SYNC)
    assert shard.join("j", "a")[0] == 0 and shard.join("j", "b")[0] == 0
    assert shard.push("j", "a", 0, g(2.0), []).applied
    assert shard.pull("j", ["w"], [], "a", 1) is None  # step 0 still waits for b
    np.testing.assert_array_equal(w(shard), [0, 0])  # nothing applied yet
    assert shard.push("j", "b", 0, g(4.0), []).applied
    pulled = shard.pull("j", ["w"], [], "a", 1)
    assert pulled is not None and pulled.version == 1 and pulled.clock == 1
    np.testing.assert_array_equal(pulled.dense["w"], [-3, -3])  # one SGD step on the mean (2+4)/2
    job = shard.store.get("j")
    assert job.variables["w"].updates == 1 and job.clocks.clock == 1


def test_sync_mean_counts_rows_a_worker_did_not_touch_as_zero(tmp_path: Path) -> None:
    shard, _ = make(tmp_path, Mode.SYNC)
    shard.join("j", "a")
    shard.join("j", "b")
    shard.push("j", "a", 0, {}, [RowValues("emb", np.array([1, 1]), np.ones((2, 2), np.float32))])
    shard.push("j", "b", 0, {}, [RowValues("emb", np.array([3]), np.full((1, 2), 4, np.float32))])
    emb = shard.pull("j", ["emb"], []).dense["emb"]
    np.testing.assert_array_equal(emb, [[0, 0], [-1, -1], [0, 0], [-2, -2]])


def test_sync_pull_for_the_current_step_does_not_wait(tmp_path: Path) -> None:
    shard, _ = make(tmp_path, Mode.SYNC)
    shard.join("j", "a")
    shard.join("j", "b")
    assert shard.pull("j", ["w"], [], "a", 0) is not None


def test_sync_dead_worker_leaves_the_barrier_when_its_lease_expires(tmp_path: Path) -> None:
    shard, now = make(tmp_path, Mode.SYNC)
    shard.join("j", "a")
    shard.join("j", "dead")
    shard.push("j", "a", 0, g(2.0), [])
    now.t += LEASE - 0.1
    assert shard.pull("j", ["w"], [], "a", 1) is None  # its lease still holds
    now.t += 0.2
    pulled = shard.pull("j", ["w"], [], "a", 1)
    assert pulled is not None
    np.testing.assert_array_equal(pulled.dense["w"], [-2, -2])  # the mean over the one live pusher
    assert shard.jobs_info()[0].workers == {"a": 1}


def test_sync_worker_that_leaves_no_longer_holds_the_step(tmp_path: Path) -> None:
    shard, _ = make(tmp_path, Mode.SYNC)
    shard.join("j", "a")
    shard.join("j", "b")
    shard.push("j", "a", 0, g(1.0), [])
    shard.leave("j", "b")
    assert shard.pull("j", ["w"], [], "a", 1) is not None


def test_sync_push_from_a_worker_left_behind_is_refused_and_it_rejoins_at_the_clock(tmp_path: Path) -> None:
    shard, now = make(tmp_path, Mode.SYNC)
    shard.join("j", "a")
    shard.join("j", "slow")
    now.t += LEASE + 1  # slow stalls; a's lease is renewed by its calls
    for step in range(3):
        shard.push("j", "a", step, g(1.0), [])
        assert shard.pull("j", [], [], "a", step + 1) is not None
    with pytest.raises(FailedPrecondition, match="behind the job's synchronous step 3"):
        shard.push("j", "slow", 0, g(100.0), [])
    assert shard.join("j", "slow")[0] == 3
    np.testing.assert_array_equal(w(shard), [-3, -3])  # its stale gradient was never applied


def test_a_worker_joining_mid_job_enters_at_the_current_step(tmp_path: Path) -> None:
    shard, _ = make(tmp_path, Mode.SYNC)
    shard.join("j", "a")
    for step in range(2):
        shard.push("j", "a", step, g(1.0), [])
    assert shard.join("j", "late")[0] == 2
    shard.push("j", "a", 2, g(1.0), [])
    assert shard.pull("j", [], [], "a", 3) is None  # step 2 now waits for the newcomer too
    shard.push("j", "late", 2, g(3.0), [])
    np.testing.assert_array_equal(shard.pull("j", ["w"], [], "a", 3).dense["w"], [-4, -4])


def test_retried_sync_push_is_buffered_once(tmp_path: Path) -> None:
    shard, _ = make(tmp_path, Mode.SYNC)
    shard.join("j", "a")
    shard.join("j", "b")
    assert shard.push("j", "a", 0, g(2.0), []).applied
    assert not shard.push("j", "a", 0, g(2.0), []).applied  # a retry
    shard.push("j", "b", 0, g(0.0), [])
    np.testing.assert_array_equal(w(shard), [-1, -1])


def test_skipped_nonfinite_push_still_completes_the_step(tmp_path: Path) -> None:
    shard, _ = make(tmp_path, Mode.SYNC, skip_nonfinite=True)
    shard.join("j", "a")
    shard.join("j", "b")
    shard.push("j", "a", 0, g(2.0), [])
    assert not shard.push("j", "b", 0, g(float("nan")), []).applied
    np.testing.assert_array_equal(shard.pull("j", ["w"], [], "a", 1).dense["w"], [-2, -2])


def test_restarted_shard_skips_ahead_to_the_workers_clocks_and_counts_the_loss(tmp_path: Path) -> None:
    shard, now = make(tmp_path, Mode.SYNC)
    shard.join("j", "a")
    shard.join("j", "b")
    for step in range(2):
        shard.push("j", "a", step, g(1.0), [])
        shard.push("j", "b", step, g(1.0), [])
    shard.save("j")  # clock 2
    for step in range(2, 5):
        shard.push("j", "a", step, g(1.0), [])
        shard.push("j", "b", step, g(1.0), [])
    # kill -9 after step 4 was applied (clock 5); restart from the checkpoint at clock 2
    restored = Shard(0, 1, tmp_path, clock=now)
    restored.load_all()
    assert restored.store.get("j").clocks.clock == 2
    # Both workers had their step-4 pushes acknowledged: they pull for 5 with 5 pushed.
    assert restored.pull("j", [], [], "a", 5) is None
    assert restored.pull("j", [], [], "b", 5) is not None
    assert restored.pull("j", [], [], "a", 5) is not None  # nobody waits for pushes made before the crash
    info = restored.jobs_info()[0]
    assert info.clock == 5 and info.lost_steps == 3
    np.testing.assert_array_equal(w(restored), [-2, -2])  # steps 2..4 are the updates lost


def test_restored_shard_keeps_the_live_workers_in_the_barrier(tmp_path: Path) -> None:
    shard, now = make(tmp_path, Mode.SYNC)
    shard.join("j", "a")
    shard.join("j", "b")
    shard.save("j")
    restored = Shard(0, 1, tmp_path, clock=now)
    restored.load_all()
    restored.push("j", "a", 0, g(1.0), [])
    assert restored.pull("j", [], [], "a", 1) is None  # b was live before the restart: wait for it


def test_sync_barrier_survives_a_checkpoint(tmp_path: Path) -> None:
    shard, now = make(tmp_path, Mode.SYNC)
    shard.join("j", "a")
    shard.join("j", "b")
    shard.push("j", "a", 0, g(2.0), [RowValues("emb", np.array([1]), np.ones((1, 2), np.float32))])
    shard.save("j")
    restored = Shard(0, 1, tmp_path, clock=now)
    restored.load_all()
    restored.push("j", "b", 0, g(4.0), [])
    np.testing.assert_array_equal(w(restored), [-3, -3])
    np.testing.assert_array_equal(restored.pull("j", ["emb"], []).dense["emb"][1], [-0.5, -0.5])


# --- BOUNDED --------------------------------------------------------------------------------


def test_bounded_pull_waits_while_the_slowest_live_worker_is_more_than_s_behind(tmp_path: Path) -> None:
    shard, _ = make(tmp_path, Mode.BOUNDED, staleness=2)
    shard.join("j", "fast")
    shard.join("j", "slow")
    for step in range(3):
        shard.push("j", "fast", step, g(1.0), [])
    assert shard.pull("j", [], [], "fast", 2) is not None  # slow at 0 >= 2 - 2
    assert shard.pull("j", [], [], "fast", 3) is None  # slow at 0 < 3 - 2
    shard.push("j", "slow", 0, g(1.0), [])
    assert shard.pull("j", [], [], "fast", 3) is not None


def test_bounded_push_beyond_the_bound_is_refused(tmp_path: Path) -> None:
    shard, _ = make(tmp_path, Mode.BOUNDED, staleness=1)
    shard.join("j", "fast")
    shard.join("j", "slow")
    shard.push("j", "fast", 0, g(1.0), [])
    shard.push("j", "fast", 1, g(1.0), [])
    with pytest.raises(FailedPrecondition, match=r"beyond the staleness bound.*clock 0 and the bound is 1"):
        shard.push("j", "fast", 2, g(1.0), [])
    np.testing.assert_array_equal(w(shard), [-2, -2])


def test_bounded_pushes_apply_on_arrival(tmp_path: Path) -> None:
    shard, _ = make(tmp_path, Mode.BOUNDED, staleness=3)
    shard.join("j", "a")
    shard.join("j", "b")
    shard.push("j", "a", 0, g(1.0), [])
    np.testing.assert_array_equal(w(shard), [-1, -1])


def test_bounded_newcomer_starts_level_with_the_slowest(tmp_path: Path) -> None:
    shard, _ = make(tmp_path, Mode.BOUNDED, staleness=1)
    shard.join("j", "a")
    shard.join("j", "b")
    for step in range(4):
        shard.push("j", "a", step, g(0.0), [])
        shard.push("j", "b", step, g(0.0), [])
    assert shard.join("j", "new")[0] == 4


def test_bounded_dead_worker_stops_holding_the_others_back(tmp_path: Path) -> None:
    shard, now = make(tmp_path, Mode.BOUNDED, staleness=0)
    shard.join("j", "a")
    shard.join("j", "dead")
    shard.push("j", "a", 0, g(1.0), [])
    assert shard.pull("j", [], [], "a", 1) is None
    now.t += LEASE + 0.1
    assert shard.pull("j", [], [], "a", 1) is not None


# --- ASYNC and general ----------------------------------------------------------------------


def test_async_pulls_never_wait(tmp_path: Path) -> None:
    shard, _ = make(tmp_path, Mode.ASYNC)
    shard.join("j", "a")
    shard.join("j", "b")
    shard.push("j", "a", 0, g(1.0), [])
    assert shard.pull("j", [], [], "a", 50) is not None


def test_prefetched_pull_is_held_until_the_workers_own_push_lands(tmp_path: Path) -> None:
    # SYNC, one worker: the pull for step 1 is sent while step 0 still computes.
    shard, _ = make(tmp_path, Mode.SYNC)
    shard.join("j", "a")
    assert shard.pull("j", ["w"], [], "a", 1, pushed=0) is None
    shard.push("j", "a", 0, g(1.0), [])
    np.testing.assert_array_equal(shard.pull("j", ["w"], [], "a", 1, pushed=0).dense["w"], [-1, -1])


def test_an_empty_push_ticks_the_clock_without_an_update(tmp_path: Path) -> None:
    shard, _ = make(tmp_path, Mode.SYNC)
    shard.join("j", "a")
    shard.join("j", "b")
    shard.push("j", "a", 0, {}, [])
    shard.push("j", "b", 0, g(2.0), [])
    np.testing.assert_array_equal(shard.pull("j", ["w"], [], "a", 1).dense["w"], [-2, -2])


def test_observer_pull_never_waits(tmp_path: Path) -> None:
    shard, _ = make(tmp_path, Mode.SYNC)
    shard.join("j", "a")
    shard.join("j", "b")
    shard.push("j", "a", 0, g(1.0), [])
    assert shard.pull("j", ["w"], []) is not None


@pytest.mark.parametrize(("clock", "pushed"), [(-1, 0), (2, 3), (0, -1)])
def test_pull_with_impossible_clocks_is_invalid(tmp_path: Path, clock: int, pushed: int) -> None:
    shard, _ = make(tmp_path, Mode.SYNC)
    with pytest.raises(InvalidArgument, match="expected 0 <= pushed <= clock"):
        shard.pull("j", [], [], "a", clock, pushed)


def test_consistency_of_a_registered_job_cannot_change(tmp_path: Path) -> None:
    shard, _ = make(tmp_path, Mode.SYNC)
    with pytest.raises(FailedPrecondition, match=r"consistency sync .* got bounded:2"):
        shard.register("j", [], None, JobConfig.parse(Mode.BOUNDED, 2, LEASE))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((Mode.BOUNDED, -1), "staleness must be in 0..1000000"),
        ((Mode.SYNC, 3), "only meaningful for bounded"),
        ((Mode.ASYNC, 0, -1.0), "worker_lease_seconds must be in"),
    ],
)
def test_bad_job_configs_are_invalid(args: tuple, needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        JobConfig.parse(*args)


def test_join_needs_a_worker_id(tmp_path: Path) -> None:
    shard, _ = make(tmp_path, Mode.SYNC)
    with pytest.raises(InvalidArgument, match="worker_id is empty"):
        shard.join("j", "")
