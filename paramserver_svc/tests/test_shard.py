"""The shard's core behaviour without transport: registration, placement, pushes, checkpoints."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from mlmesh import keys
from mlmesh.errors import FailedPrecondition, InvalidArgument, NotFound

from paramserver_svc.core import checkpoint
from paramserver_svc.core.initializers import glorot_limit, initial_value
from paramserver_svc.core.shard import RowValues, Shard
from paramserver_svc.core.specs import InitSpec, OptimizerConfig, VarSpec

pytestmark = pytest.mark.unit

F32 = np.dtype(np.float32)
SGD1 = OptimizerConfig.parse("sgd", 1.0)
ADAM = OptimizerConfig.parse("adam", 0.01)


def test_initializers_are_deterministic_per_seed_and_differ_per_shard() -> None:
    table = VarSpec("emb", F32, (10, 4), row_sharded=True)
    init = InitSpec("random_normal", scale=0.5, seed=3)
    a0 = initial_value(table, init, (5, 4), 0)
    np.testing.assert_array_equal(a0, initial_value(table, init, (5, 4), 0))
    assert not np.array_equal(a0, initial_value(table, init, (5, 4), 1))
    dense = VarSpec("w", F32, (30, 20))
    g = initial_value(dense, InitSpec("glorot_uniform", seed=1), (30, 20), 0)
    assert np.abs(g).max() <= glorot_limit((30, 20)) == pytest.approx(np.sqrt(6 / 50))
    assert np.abs(g).max() > 0.8 * glorot_limit((30, 20))
    u = initial_value(dense, InitSpec("random_uniform", scale=0.1, seed=1), (30, 20), 0)
    assert u.dtype == F32 and np.abs(u).max() <= 0.1
    np.testing.assert_array_equal(initial_value(dense, InitSpec("constant", scale=2.5), (30, 20), 0), 2.5)
    np.testing.assert_array_equal(initial_value(dense, InitSpec("ones"), (30, 20), 0), 1.0)


def test_glorot_fans_follow_keras_for_convolution_kernels() -> None:
    # 3x3 kernel, 8 in, 16 out: fan_in = 72, fan_out = 144
    assert glorot_limit((3, 3, 8, 16)) == pytest.approx(np.sqrt(6 / (72 + 144)))


@pytest.mark.parametrize("layout", list(keys.RowLayout))
def test_row_sharded_variable_holds_only_its_rows(tmp_path: Path, layout: keys.RowLayout) -> None:
    shards = [Shard(i, 3, tmp_path / str(i)) for i in range(3)]
    spec = VarSpec("emb", F32, (10, 2), row_sharded=True, layout=layout)
    full = np.arange(20, dtype=np.float32).reshape(10, 2)
    rows = keys.row_placement(10, 3, layout)
    for s in shards:
        s.register("j", [(spec, InitSpec("value", value=rows.shard_slice(full, s.index)))], SGD1)
    held = [len(s.store.get("j").variables["emb"].value) for s in shards]
    assert held == [rows.count(i) for i in range(3)] and sum(held) == 10
    owner = int(rows.owner(np.array([7]))[0])
    mine = rows.global_rows(owner)
    ids = np.array([mine[-1], mine[0], mine[-1]])
    got = shards[owner].pull("j", [], [RowValues("emb", ids)]).rows[0].values
    np.testing.assert_array_equal(got, full[ids])


def test_duplicate_rows_in_one_push_are_summed(tmp_path: Path) -> None:
    shard = Shard(0, 2, tmp_path)
    spec = VarSpec("emb", F32, (6, 2), row_sharded=True, layout=keys.RowLayout.BLOCKS)
    shard.register("j", [(spec, InitSpec("zeros"))], SGD1)
    g = np.array([[1, 1], [2, 2], [10, 10]], dtype=np.float32)
    shard.push("j", "w0", 0, {}, [RowValues("emb", np.array([2, 0, 2]), g)])
    out = shard.pull("j", ["emb"], []).dense["emb"]  # local block: global rows 0, 1, 2
    np.testing.assert_array_equal(out, [[-2, -2], [0, 0], [-11, -11]])


@pytest.mark.parametrize("order", ["local", "reversed"])
def test_pushing_every_row_equals_the_same_update_on_the_whole_array(tmp_path: Path, order: str) -> None:
    # A partitioned dense variable pushes all of a shard's rows each step (lazy Adam on
    # every row is plain Adam); whatever path applies it, the result must be the same.
    full = np.linspace(-1, 1, 7 * 3, dtype=np.float32).reshape(7, 3)
    grads = [np.full((7, 3), g, np.float32) + full for g in (0.5, -0.25, 1.0)]
    part = Shard(1, 2, tmp_path / "part")
    spec = VarSpec("k", F32, (7, 3), True, keys.RowLayout.BLOCKS)  # shard 1 of 2 holds rows 3..6
    part.register("j", [(spec, InitSpec("value", value=full[3:]))], ADAM)
    whole = Shard(0, 1, tmp_path / "whole")
    whole.register("j", [(VarSpec("k", F32, (7, 3)), InitSpec("value", value=full))], ADAM)
    rows = np.array([3, 4, 5, 6]) if order == "local" else np.array([6, 5, 4, 3])
    for step, g in enumerate(grads, start=1):
        assert part.push("j", "w", step, {}, [RowValues("k", rows, g[rows])]).applied
        whole.push("j", "w", step, {"k": g}, [])
    got = part.pull("j", ["k"], []).dense["k"]
    np.testing.assert_allclose(got, whole.pull("j", ["k"], []).dense["k"][3:], rtol=1e-6)
    slots = part.store.get("j").variables["k"].slots
    np.testing.assert_allclose(slots["m"], whole.store.get("j").variables["k"].slots["m"][3:], rtol=1e-6)


def test_push_is_idempotent_per_worker_step(tmp_path: Path) -> None:
    name = "w"
    shard = Shard(0, 1, tmp_path)
    shard.register("j", [(VarSpec(name, F32, (2,)), InitSpec("zeros"))], SGD1)
    g = {name: np.ones(2, dtype=np.float32)}
    assert shard.push("j", "a", 5, g, []).applied
    assert not shard.push("j", "a", 5, g, []).applied  # a retry
    assert not shard.push("j", "a", 3, g, []).applied  # stale
    assert shard.push("j", "b", 0, g, []).applied  # other workers keep their own clock
    result = shard.push("j", "a", 6, g, [])
    assert result.applied and result.version == 3
    np.testing.assert_array_equal(shard.pull("j", [name], []).dense[name], [-3, -3])


def test_nan_in_any_gradient_applies_nothing(tmp_path: Path) -> None:
    shard = Shard(0, 1, tmp_path)
    shard.register(
        "j",
        [(VarSpec("a", F32, (2,)), InitSpec("ones")), (VarSpec("b", F32, (2,)), InitSpec("ones"))],
        SGD1,
    )
    good, bad = np.ones(2, dtype=np.float32), np.array([1, np.inf], dtype=np.float32)
    with pytest.raises(InvalidArgument, match="'b'"):
        shard.push("j", "w", 0, {"a": good, "b": bad}, [])
    pulled = shard.pull("j", ["a", "b"], [])
    assert pulled.version == 0
    np.testing.assert_array_equal(pulled.dense["a"], [1, 1])
    assert shard.push("j", "w", 0, {"a": good, "b": good}, []).applied  # step 0 was not consumed


def test_a_finite_gradient_whose_sum_of_squares_overflows_is_applied(tmp_path: Path) -> None:
    """The NaN/Inf check's fast path overflows here; its exact fallback must accept."""
    shard = Shard(0, 1, tmp_path)
    shard.register(
        "j", [(VarSpec("w", F32, (1000,)), InitSpec("zeros"))], OptimizerConfig.parse("sgd", 1e-30)
    )
    grad = np.full(1000, 3e38, dtype=np.float32)
    assert shard.push("j", "w", 0, {"w": grad}, []).applied
    np.testing.assert_allclose(shard.pull("j", ["w"], []).dense["w"], -3e8, rtol=1e-5)


@pytest.mark.parametrize("optimizer", [SGD1, ADAM], ids=["sgd", "adam"])
def test_values_a_pull_or_a_snapshot_took_are_never_changed_by_later_pushes(
    tmp_path: Path, optimizer: OptimizerConfig
) -> None:
    """Copy-on-write: readers hold the variables' own arrays after the lock is released."""
    shard = Shard(0, 1, tmp_path)
    shard.register(
        "j",
        [
            (VarSpec("w", F32, (4, 3)), InitSpec("ones")),
            (VarSpec("emb", F32, (6, 2), True), InitSpec("ones")),
        ],
        optimizer,
    )
    pulled = shard.pull("j", ["w", "emb"], [])  # the row-sharded table whole: this shard's part
    job = shard.store.get("j")
    with job.lock:
        snap = job.snapshot()
    for step in range(3):
        shard.push(
            "j",
            "a",
            step,
            {"w": np.ones((4, 3), F32)},
            [RowValues("emb", np.array([1, 4]), np.ones((2, 2), F32))],
        )
    for name in ("w", "emb"):
        np.testing.assert_array_equal(pulled.dense[name], 1.0)
        with pytest.raises(ValueError, match="read-only"):
            pulled.dense[name][0] = 5.0
    assert [v.updates for v in snap.variables] == [0, 0]
    for v in snap.variables:
        np.testing.assert_array_equal(v.value, 1.0)
        for slot in v.slots.values():  # Adam's m and v start at 0; SGD has none
            np.testing.assert_array_equal(slot, 0.0)
    now = shard.pull("j", ["w"], [RowValues("emb", np.array([0, 1, 4]))])
    assert now.version == 3 and np.all(now.dense["w"] < 1.0)
    emb = now.rows[0].values
    np.testing.assert_array_equal(emb[0], 1.0)
    assert np.all(emb[1:] < 1.0)


def test_reregistration_rules(tmp_path: Path) -> None:
    shard = Shard(0, 1, tmp_path)
    spec = VarSpec("w", F32, (3,))
    assert shard.register("j", [(spec, InitSpec("ones"))], ADAM) == (["w"], [])
    shard.push("j", "x", 0, {"w": np.ones(3, dtype=np.float32)}, [])
    value = shard.pull("j", ["w"], []).dense["w"]
    # same spec, other initializer: kept as it is
    assert shard.register("j", [(spec, InitSpec("zeros"))], ADAM) == ([], ["w"])
    np.testing.assert_array_equal(shard.pull("j", ["w"], []).dense["w"], value)
    with pytest.raises(FailedPrecondition, match=r"float32\[3\].*float32\[4\]"):
        shard.register("j", [(VarSpec("w", F32, (4,)), InitSpec())], None)
    with pytest.raises(FailedPrecondition, match=r"adam.*sgd"):
        shard.register("j", [], SGD1)
    # a failed request creates nothing, even the valid variables in it
    with pytest.raises(InvalidArgument):
        shard.register(
            "j", [(VarSpec("ok", F32, (1,)), InitSpec()), (VarSpec("bad", F32, (2,)), InitSpec("nope"))], None
        )
    assert "ok" not in shard.store.get("j").variables
    with pytest.raises(InvalidArgument, match="optimizer"):
        shard.register("new-job", [(spec, InitSpec())], None)
    with pytest.raises(NotFound):
        shard.store.get("new-job")


def test_pulls_never_see_half_a_push(tmp_path: Path) -> None:
    """Two variables always move together; a torn read would show them apart."""
    shard = Shard(0, 1, tmp_path)
    size = 200_000
    shard.register(
        "j",
        [(VarSpec("a", F32, (size,)), InitSpec("zeros")), (VarSpec("b", F32, (size,)), InitSpec("zeros"))],
        SGD1,
    )
    g = {"a": np.full(size, -1, dtype=np.float32), "b": np.full(size, -1, dtype=np.float32)}
    torn: list[str] = []

    def pusher() -> None:
        for step in range(60):
            shard.push("j", "w", step, g, [])

    def puller() -> None:
        for _ in range(60):
            r = shard.pull("j", ["a", "b"], [])
            a, b = r.dense["a"], r.dense["b"]
            if not (a[0] == a[-1] == b[0] == b[-1] == r.version):
                torn.append(f"version {r.version}: a {a[0]}..{a[-1]}, b {b[0]}..{b[-1]}")

    threads = [
        threading.Thread(target=pusher),
        threading.Thread(target=puller),
        threading.Thread(target=puller),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not torn, torn[:3]
    assert shard.pull("j", [], []).version == 60


def test_checkpoint_round_trip_restores_values_slots_clocks_and_version(tmp_path: Path) -> None:
    shard = Shard(1, 2, tmp_path)
    name = "dense/kernel"
    shard.register(
        "job/1",
        [
            (VarSpec(name, F32, (3, 2)), InitSpec("random_normal", scale=1.0, seed=4)),
            (VarSpec("emb", F32, (7, 2), row_sharded=True), InitSpec("ones")),
        ],
        ADAM,
    )
    rng = np.random.default_rng(0)
    mine = keys.row_placement(7, 2).global_rows(1)[:2]
    for step in range(3):
        shard.push(
            "job/1",
            "w0",
            step,
            {name: rng.normal(size=(3, 2)).astype(np.float32)},
            [RowValues("emb", mine, rng.normal(size=(2, 2)).astype(np.float32))],
        )
    path, version = shard.save("job/1")
    assert version == 3 and path.parent == tmp_path and not path.name.startswith(".")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left behind

    restored = Shard(1, 2, tmp_path)
    assert restored.load_all() == [(path.name, 3)]
    before, after = shard.store.get("job/1"), restored.store.get("job/1")
    assert after.optimizer == ADAM and after.clocks.next == {"w0": 3}
    for vname, v in before.variables.items():
        w = after.variables[vname]
        assert w.spec == v.spec and w.updates == v.updates == 3
        np.testing.assert_array_equal(w.value, v.value)
        for k in v.slots:
            np.testing.assert_array_equal(w.slots[k], v.slots[k])
    # the restored shard continues exactly like the original
    g = {name: np.ones((3, 2), dtype=np.float32)}
    assert not restored.push("job/1", "w0", 2, g, []).applied
    shard.push("job/1", "w0", 3, g, [])
    restored.push("job/1", "w0", 3, g, [])
    np.testing.assert_array_equal(
        restored.pull("job/1", [name], []).dense[name], shard.pull("job/1", [name], []).dense[name]
    )


def test_load_replaces_newer_state_and_missing_checkpoint_is_not_found(tmp_path: Path) -> None:
    shard = Shard(0, 1, tmp_path)
    shard.register("j", [(VarSpec("w", F32, (2,)), InitSpec("zeros"))], SGD1)
    shard.save("j")
    shard.push("j", "w", 0, {"w": np.ones(2, dtype=np.float32)}, [])
    assert shard.load("j") == 0
    np.testing.assert_array_equal(shard.pull("j", ["w"], []).dense["w"], [0, 0])
    with pytest.raises(NotFound, match="'other'"):
        shard.load("other")


def test_checkpoint_of_another_shard_layout_is_refused(tmp_path: Path) -> None:
    shard = Shard(0, 1, tmp_path)
    shard.register("j", [(VarSpec("w", F32, (2,)), InitSpec("zeros"))], SGD1)
    shard.save("j")
    with pytest.raises(FailedPrecondition, match="shard 0 of 1; this is shard 0 of 2"):
        Shard(0, 2, tmp_path).load_all()


def test_corrupt_checkpoint_is_refused_with_its_path(tmp_path: Path) -> None:
    bad = tmp_path / f"{checkpoint.job_stem('j')}.0000000001.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(FailedPrecondition, match=rf"{bad}.*unreadable"):
        Shard(0, 1, tmp_path).load_all()


def test_save_dirty_writes_only_changed_jobs(tmp_path: Path) -> None:
    shard = Shard(0, 1, tmp_path)
    for job in ("a", "b"):
        shard.register(job, [(VarSpec("w", F32, (2,)), InitSpec("zeros"))], SGD1)
    assert sorted(shard.save_dirty()) == ["a", "b"]
    assert shard.save_dirty() == []
    shard.push("b", "w", 0, {"w": np.ones(2, dtype=np.float32)}, [])
    assert shard.save_dirty() == ["b"]


def test_checkpoints_fall_due_by_time_or_by_steps(tmp_path: Path) -> None:
    now = [100.0]
    shard = Shard(0, 1, tmp_path, clock=lambda: now[0])
    shard.register("j", [(VarSpec("w", F32, (2,)), InitSpec("zeros"))], SGD1)
    shard.save("j")
    for step in range(3):
        shard.push("j", "w", step, {"w": np.ones(2, dtype=np.float32)}, [])
    assert shard.save_due(every_seconds=10, every_steps=0) == []
    assert shard.save_due(every_seconds=0, every_steps=4) == []
    assert shard.save_due(every_seconds=0, every_steps=3) == ["j"]
    shard.push("j", "w", 3, {"w": np.ones(2, dtype=np.float32)}, [])
    now[0] += 10
    assert shard.save_due(every_seconds=10, every_steps=0) == ["j"]
    assert shard.save_due(every_seconds=10, every_steps=1) == []  # nothing changed since


def test_only_the_newest_checkpoints_are_kept(tmp_path: Path) -> None:
    shard = Shard(0, 1, tmp_path, keep_checkpoints=2)
    shard.register("j", [(VarSpec("w", F32, (2,)), InitSpec("zeros"))], SGD1)
    paths = [shard.save("j")[0] for _ in range(4)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [paths[2].name, paths[3].name]
