"""The supervisor, on real child processes (the tiny service)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlmesh.clients import check_health
from mlmesh.supervisor import ServiceSpec, Supervisor, SupervisorError
from mlmesh_testutil import pid_alive, popen, tiny_env, wait_dead, wait_for_file

pytestmark = pytest.mark.unit


def tiny(
    name: str, stop_log: Path, *extra: str, ready_timeout: float = 20.0, drain: float = 0.0
) -> ServiceSpec:
    """A tiny child that takes about `drain` seconds to stop after SIGTERM."""
    args = [
        "--name",
        name,
        "--stop-log",
        str(stop_log),
        "--drain-seconds",
        str(drain),
        "--grace-seconds",
        "1",
    ]
    return ServiceSpec(name, "mlmesh_tinysvc", [*args, *extra], "", ready_timeout)


def make(tmp_path: Path, grace_seconds: float = 5, **kw: float) -> Supervisor:
    return Supervisor(tmp_path / "run", env=tiny_env(), grace_seconds=grace_seconds, **kw)  # type: ignore[arg-type]


def stopped_names(stop_log: Path) -> list[str]:
    """Names in the order the children ran their on_stop hook."""
    return [line.split()[0] for line in stop_log.read_text().splitlines()]


def event_times(sup: Supervisor, what: str, names: list[str]) -> list[float]:
    return [t for t, n, w in sup.events if w == what and n in names]


def test_restarts_a_killed_child_on_the_same_port_and_stops_groups_in_reverse_order(
    tmp_path: Path,
) -> None:
    stop_log = tmp_path / "stops"
    sup = make(tmp_path, backoff_initial=0.1)
    pids: list[int] = []
    try:
        with sup:
            infos = sup.start_group([tiny("a", stop_log), tiny("b", stop_log)])
            infos.append(sup.start(tiny("c", stop_log)))
            assert [i.state for i in infos] == ["running"] * 3
            assert all(check_health(i.addr) == "SERVING" for i in infos)
            assert (tmp_path / "run" / "logs" / "b.log").exists()
            before = sup.info("b")
            os.kill(before.pid, signal.SIGKILL)  # type: ignore[arg-type]
            after = sup.wait_running("b", timeout=20, min_restarts=1)
            assert after.port == before.port
            assert after.pid != before.pid
            assert check_health(after.addr) == "SERVING"
            assert ("b", "restarted") in [(n, w) for _, n, w in sup.events]
            pids = [c.pid for c in sup.children() if c.pid]
    finally:
        sup.stop()
    names = stopped_names(stop_log)
    assert names[0] == "c" and sorted(names[1:]) == ["a", "b"]  # a and b: one group, stopped together
    assert wait_dead(pids, timeout=5) == []
    assert {c.state for c in sup.children()} == {"stopped"}


def test_children_of_one_group_stop_together_in_about_one_childs_time(tmp_path: Path) -> None:
    drain, names = 3.0, ["s0", "s1", "s2"]
    stop_log = tmp_path / "stops"
    with make(tmp_path) as sup:
        infos = sup.start_group([tiny(n, stop_log, drain=drain) for n in names])
        t = time.monotonic()
        sup.stop()
        elapsed = time.monotonic() - t
    # One after another this takes at least 3 x drain; together about one drain.
    assert drain <= elapsed < 2 * drain
    assert max(event_times(sup, "stopping", names)) < min(event_times(sup, "stopped", names))
    assert sorted(stopped_names(stop_log)) == names  # each stopped gracefully
    assert wait_dead([i.pid for i in infos], timeout=5) == []  # type: ignore[misc]
    assert {c.state for c in sup.children()} == {"stopped"}


def test_a_group_is_gone_before_the_group_started_before_it_is_signalled(tmp_path: Path) -> None:
    stop_log = tmp_path / "stops"
    groups = [["a0", "a1"], ["b0", "b1"], ["c"]]
    sup = make(tmp_path)
    with sup:
        for group in groups:
            sup.start_group([tiny(n, stop_log, drain=0.3) for n in group])
    names = stopped_names(stop_log)
    assert names[0] == "c"
    assert sorted(names[1:3]) == ["b0", "b1"]
    assert sorted(names[3:]) == ["a0", "a1"]
    for later, earlier in itertools.pairwise(reversed(groups)):
        assert max(event_times(sup, "stopped", later)) <= min(event_times(sup, "stopping", earlier))


def test_children_outliving_the_grace_period_are_killed_together(tmp_path: Path) -> None:
    grace, names = 1.5, ["k0", "k1", "k2"]
    stop_log = tmp_path / "stops"
    with make(tmp_path, grace_seconds=grace) as sup:
        infos = sup.start_group([tiny(n, stop_log, drain=30) for n in names])
        t = time.monotonic()
        sup.stop()
        elapsed = time.monotonic() - t
    assert grace <= elapsed < 2 * grace  # one grace period for the group, not one per child
    assert sorted(n for _, n, w in sup.events if w == "killed") == names
    assert not stop_log.exists()  # none got to its on_stop hook
    assert wait_dead([i.pid for i in infos], timeout=5) == []  # type: ignore[misc]
    assert {c.state for c in sup.children()} == {"stopped"}


def test_child_exiting_before_ready_is_an_error_pointing_at_its_log(tmp_path: Path) -> None:
    with make(tmp_path) as sup, pytest.raises(SupervisorError) as e:
        sup.start(tiny("broken", tmp_path / "stops", "--fail-at-start", "true"))
    msg = str(e.value)
    assert "broken exited with code 3 before it was ready" in msg
    assert str(tmp_path / "run" / "logs" / "broken.log") in msg
    assert "tiny: failing at start as asked" in msg  # the log's tail


def test_child_not_ready_in_time_is_killed_and_reported(tmp_path: Path) -> None:
    with make(tmp_path) as sup:
        with pytest.raises(SupervisorError, match=r"slow was not ready within 1s .*see its log"):
            sup.start(tiny("slow", tmp_path / "stops", "--start-delay", "30", ready_timeout=1))
        info = sup.info("slow")
        assert info.state == "failed"
        assert wait_dead([info.pid], timeout=5) == []  # type: ignore[list-item]


def test_gives_up_after_the_restart_limit_with_growing_backoff(tmp_path: Path) -> None:
    poison = tmp_path / "poison"
    sup = make(tmp_path, backoff_initial=0.1, restart_limit=2)
    with sup:
        info = sup.start(tiny("flaky", tmp_path / "stops", "--fail-if-exists", str(poison)))
        poison.touch()
        os.kill(info.pid, signal.SIGKILL)  # type: ignore[arg-type]
        deadline = time.monotonic() + 20
        while sup.info("flaky").state != "failed" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sup.info("flaky").state == "failed"
    starts = [t for t, n, w in sup.events if n == "flaky" and w == "started"]
    assert len(starts) == 3  # first start + restart_limit restarts
    gaps = [b - a for a, b in itertools.pairwise(starts[1:])]
    first_gap = starts[1] - starts[0]
    assert all(g > first_gap * 0.8 for g in gaps)


def test_removed_child_drains_is_not_restarted_and_its_name_can_start_again(tmp_path: Path) -> None:
    stop_log = tmp_path / "stops"
    with make(tmp_path, backoff_initial=0.1) as sup:
        sup.start(tiny("a", stop_log))
        b = sup.start(tiny("b", stop_log, drain=0.3))
        removed = sup.remove("b")
        assert removed.state == "stopped" and not pid_alive(b.pid or 0)
        assert stopped_names(stop_log) == ["b"]  # SIGTERM: its on_stop hook ran (a drain, not a kill)
        assert [c.name for c in sup.children()] == ["a"]
        time.sleep(0.5)  # past the restart backoff: nothing brings it back
        assert [c.name for c in sup.children()] == ["a"] and not (sup.run_dir / "b.json").exists()
        again = sup.start(tiny("b", stop_log))
        assert again.state == "running" and check_health(again.addr, "") == "SERVING"
        with pytest.raises(KeyError):
            sup.remove("nobody")


def test_duplicate_name_is_refused(tmp_path: Path) -> None:
    with make(tmp_path) as sup:
        sup.start(tiny("one", tmp_path / "stops"))
        with pytest.raises(SupervisorError, match="already started"):
            sup.start(tiny("one", tmp_path / "stops"))


SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from mlmesh.supervisor import ServiceSpec, Supervisor, terminate_on_signals
    terminate_on_signals()
    run, stop_log, out = sys.argv[1], sys.argv[2], sys.argv[3]
    with Supervisor(run, grace_seconds=5) as sup:
        infos = sup.start_group([
            ServiceSpec(n, "mlmesh_tinysvc", ["--name", n, "--stop-log", stop_log, "--drain-seconds", "0"])
            for n in ("x", "y")
        ])
        with open(out + ".tmp", "w") as f:
            json.dump([i.pid for i in infos], f)
        import os; os.rename(out + ".tmp", out)
        try:
            while True:
                time.sleep(0.1)
        except KeyboardInterrupt:
            pass
    """
)


def _run_script(
    tmp_path: Path, spawn: list[subprocess.Popen[bytes]]
) -> tuple[subprocess.Popen[bytes], list[int]]:
    script = tmp_path / "sup.py"
    script.write_text(SCRIPT)
    out = tmp_path / "pids.json"
    proc = popen(
        [str(script), str(tmp_path / "run"), str(tmp_path / "stops"), str(out)], tmp_path / "sup.log"
    )
    spawn.append(proc)
    wait_for_file(out, timeout=30)
    pids = json.loads(out.read_text())
    assert all(pid_alive(p) for p in pids)
    return proc, pids


def test_children_die_with_a_sigkilled_supervisor(
    tmp_path: Path, spawn: list[subprocess.Popen[bytes]]
) -> None:
    proc, pids = _run_script(tmp_path, spawn)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)
    assert wait_dead(pids, timeout=5) == []


def test_sigterm_to_the_supervisor_stops_children_gracefully(
    tmp_path: Path, spawn: list[subprocess.Popen[bytes]]
) -> None:
    proc, pids = _run_script(tmp_path, spawn)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert wait_dead(pids, timeout=1) == []
    # Graceful: each ran its on_stop hook.
    assert sorted(stopped_names(tmp_path / "stops")) == ["x", "y"]


def test_python_used_for_children_is_this_interpreter(tmp_path: Path) -> None:
    assert Supervisor(tmp_path / "r").python == sys.executable
