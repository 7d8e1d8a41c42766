"""Helpers for the cross-service tests: run `mlmesh` as a real process, find leftovers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest


def mlmesh(
    args: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`python -m mlmesh.cli.main <args>` in its own session, output to `log`."""
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "mlmesh.cli.main", *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env={**os.environ, "COLUMNS": "120", **(env or {})},
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes], grace: float = 60.0) -> None:
    """SIGTERM (the CLI then stops its children), then SIGKILL to the session."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def run_to_end(
    args: list[str], log: Path, cwd: Path, root: Path, timeout: float
) -> tuple[int, list[tuple[int, str]]]:
    """Run `mlmesh <args>` until it exits (fails the test after `timeout` s), always stop it,
    and return its exit code and the processes under `root` still alive 20 s later."""
    proc = mlmesh(args, log, cwd=cwd)
    try:
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"mlmesh {args[0]} did not finish within {timeout}s:\n{tail(log)}")
    finally:
        stop(proc)
        leftovers = wait_gone(str(root), timeout=20)
    return rc, leftovers


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains `text` (our root dir is in every child's flags)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z" and int(entry.name) != os.getpid():
            found.append((int(entry.name), cmdline.strip()))
    return found


def wait_gone(text: str, timeout: float = 15.0) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    while True:
        left = processes_mentioning(text)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def wait_json(path: Path, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    """The JSON at `path` once it exists; AssertionError with the log tail if `proc` dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            try:
                return json.loads(path.read_text())  # type: ignore[no-any-return]
            except ValueError:
                pass
        if proc.poll() is not None:
            raise AssertionError(f"mlmesh exited with {proc.returncode} before writing {path}:\n{tail(log)}")
        time.sleep(0.2)
    raise AssertionError(f"{path} did not appear within {timeout}s:\n{tail(log)}")


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def service_entry(suite: dict[str, Any], name: str) -> dict[str, Any]:
    """One service's entry in suite.json."""
    return next(s for s in suite["services"] if s["name"] == name)


def wait_restarted(suite_file: Path, name: str, old_pid: int, timeout: float = 90) -> dict[str, Any]:
    """The service's entry in suite.json once `mlmesh up` reports it running again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            svc = service_entry(json.loads(suite_file.read_text()), name)
        except (OSError, ValueError, StopIteration):
            svc = {}
        if (
            svc.get("pid") not in (None, old_pid)
            and svc.get("state") == "running"
            and svc.get("restarts", 0) >= 1
        ):
            return svc
        time.sleep(0.2)
    raise AssertionError(f"{name} was not restarted within {timeout}s")
