"""Replicas take turns loading a model: the flock on the model directory."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from serving_svc.core.load_lock import turn_to_load

pytestmark = pytest.mark.unit


def hold(model_dir: Path, seconds: float) -> threading.Thread:
    """Another replica's load: holds the lock through its own open file for `seconds`."""
    ready = threading.Event()

    def run() -> None:
        fd = os.open(model_dir, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        ready.set()
        time.sleep(seconds)
        os.close(fd)

    t = threading.Thread(target=run)
    t.start()
    assert ready.wait(5)
    return t


def test_a_load_waits_for_the_other_replicas_load_of_the_same_model(tmp_path: Path) -> None:
    other = hold(tmp_path, 0.4)
    started = time.monotonic()
    with turn_to_load(tmp_path, timeout_s=10) as waited:
        assert time.monotonic() - started >= 0.3
        assert waited >= 0.3
    other.join()
    with turn_to_load(tmp_path, timeout_s=10) as waited:  # free now: no wait
        assert waited < 0.2


def test_a_stuck_holder_is_waited_for_only_until_the_timeout(tmp_path: Path) -> None:
    other = hold(tmp_path, 2.0)
    started = time.monotonic()
    with turn_to_load(tmp_path, timeout_s=0.3) as waited:
        assert 0.3 <= waited < 1.5
    assert time.monotonic() - started < 1.5
    other.join()


def test_no_staggering_when_off_or_without_a_directory(tmp_path: Path) -> None:
    other = hold(tmp_path, 1.0)
    with turn_to_load(tmp_path, timeout_s=0) as waited:
        assert waited == 0.0
    with turn_to_load(tmp_path / "missing", timeout_s=10) as waited:
        assert waited == 0.0
    other.join()


def test_a_killed_holder_releases_its_turn(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(tmp_path)!r}, os.O_RDONLY | os.O_DIRECTORY)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"locked"
        proc.kill()  # kill -9 mid-load
        proc.wait(10)
        with turn_to_load(tmp_path, timeout_s=30) as waited:
            assert waited < 1.0
    finally:
        proc.kill()
        proc.wait(10)


def test_a_load_thread_lowers_its_own_priority_only() -> None:
    from serving_svc.core.load_lock import lower_thread_priority

    seen: dict[str, int] = {}

    def load() -> None:
        lower_thread_priority(19)
        seen["loader"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        lower_thread_priority(5)  # never raises it back (that would need privileges)
        seen["again"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    t = threading.Thread(target=load)
    t.start()
    t.join()
    assert seen == {"loader": 19, "again": 19}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before  # this thread untouched
