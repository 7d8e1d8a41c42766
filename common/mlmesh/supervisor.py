"""A process supervisor for the local suite: start in order, restart, stop in reverse.

Each child is `python -m <module> <args> --host H --port P --port-file
<run_dir>/<name>.json --log-format json`, in its own process group, with its
stdout and stderr appended to `<run_dir>/logs/<name>.log`.

- `start(spec)` blocks until the child is ready: its port file exists and,
  for gRPC services, `grpc.health.v1` Check answers SERVING for
  `spec.health_service` (a spec with `health_service=None`, like the gateway,
  is ready when its port file appears). Start dependencies first.
- A child that exits while not being stopped is restarted after an
  exponential backoff, on the SAME port (`--port N`; others hold its
  address), until it fails `restart_limit` times in a row.
- `stop()` (or leaving the `with` block) stops children group by group, the
  last started group first (`start_group`; `start` is a group of one). Within
  a group every child gets SIGTERM at once; those still running after
  `grace_seconds` get SIGKILL to their whole process group. A group is
  stopped (children and their process groups gone) before the one started
  before it is signalled, so stopping costs about the slowest child of each
  group, and a child never outlives what it depends on.
- `remove(name)` stops one child the same way (SIGTERM, grace, SIGKILL) and
  forgets it: scaling down. Scaling up is `start` at any time.
- Children get PR_SET_PDEATHSIG=SIGKILL, so none outlives the supervisor even
  if the supervisor is SIGKILLed: each child asks for it itself
  (`mlmesh.lifeline`, from `MLMESH_PARENT_PID`), since a `preexec_fn` would
  run gRPC's fork handlers in it. The kernel sends it when the *thread* that
  forked the child ends, so every child is forked by one owner thread that
  lives as long as the supervisor.

Thread-safety: all public methods may be called from any thread. `stop()` is
idempotent.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from prometheus_client import Counter

from mlmesh.clients import check_health
from mlmesh.lifeline import PARENT_PID_ENV
from mlmesh.logging import get_logger

RESTARTS = Counter(
    "mlmesh_supervisor_restarts_total", "Children restarted after an unexpected exit", ["service"]
)

_LOG_TAIL_LINES = 25

State = Literal["launching", "running", "backoff", "restarting", "failed", "stopping", "stopped"]

log = get_logger("mlmesh.supervisor")


class SupervisorError(RuntimeError):
    """A child could not be started or made ready; the message points at its log."""


@dataclass(frozen=True)
class ServiceSpec:
    """How to run one child.

    name: unique; names the port file and the log file.
    module: run as `python -m module`; `args` follow (a sub-command first).
    health_service: the grpc.health.v1 service name that must be SERVING; None
        when the port file alone means ready (the gateway writes it once Envoy
        is ready).
    """

    name: str
    module: str
    args: Sequence[str] = ()
    health_service: str | None = ""
    ready_timeout: float = 120.0
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ChildInfo:
    """A snapshot of one child."""

    name: str
    state: State
    pid: int | None
    port: int | None
    host: str
    ports: Mapping[str, Any]
    restarts: int
    log_path: Path

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class _Child:
    spec: ServiceSpec
    port_file: Path
    log_path: Path
    state: State = "launching"
    proc: subprocess.Popen[bytes] | None = None
    port: int | None = None
    ports: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0
    failures_in_row: int = 0
    group: int = 0  # children started by one start_group share it; stop runs by group, highest first
    started_at: float = 0.0
    ready_deadline: float = 0.0
    next_restart_at: float = 0.0


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _read_port_file(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("port"), int) or data["port"] <= 0:
        return None
    return data


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Supervisor:
    """Starts, watches, restarts and stops child services. See the module docstring."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        restart_limit: int = 5,
        backoff_initial: float = 0.5,
        backoff_max: float = 15.0,
        stable_seconds: float = 30.0,
        grace_seconds: float = 10.0,
        log_format: str = "json",
        log_level: str = "info",
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        python: str = sys.executable,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.logs_dir = self.run_dir / "logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.restart_limit = restart_limit
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stable_seconds = stable_seconds
        self.grace_seconds = grace_seconds
        self.log_format = log_format
        self.log_level = log_level
        self.env = dict(env or {})
        self.cwd = Path(cwd) if cwd else None
        self.python = python
        self.events: list[tuple[float, str, str]] = []
        self._children: list[_Child] = []
        self._groups = 0
        self._lock = threading.RLock()
        self._calls: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()
        self._stopping = False
        self._closed = threading.Event()
        self._hurry = threading.Event()
        self._owner = threading.Thread(target=self._run_owner, name="mlmesh-supervisor", daemon=True)
        self._owner.start()

    # --- public -----------------------------------------------------------

    def start(self, spec: ServiceSpec) -> ChildInfo:
        """Start `spec` and block until it is ready; SupervisorError (child killed) if it is not."""
        return self.start_group([spec])[0]

    def start_group(self, specs: Sequence[ServiceSpec]) -> list[ChildInfo]:
        """Start services that do not depend on each other together; block until all are ready.

        They are stopped together too, before any group started earlier. On
        the first failure the failed child is killed and SupervisorError
        raised; the others keep running until `stop()`.
        """
        with self._lock:
            self._groups += 1
            group = self._groups
        launched = [self._launch(spec, group) for spec in specs]
        return [self._await_ready(child) for child in launched]

    def _launch(self, spec: ServiceSpec, group: int) -> _Child:
        with self._lock:
            if self._stopping:
                raise SupervisorError(f"cannot start {spec.name}: the supervisor is stopping")
            if any(c.spec.name == spec.name for c in self._children):
                raise SupervisorError(f"a child named {spec.name!r} was already started")
            child = _Child(
                spec=spec,
                port_file=self.run_dir / f"{spec.name}.json",
                log_path=self.logs_dir / f"{spec.name}.log",
                group=group,
            )
            self._children.append(child)
        self._on_owner(lambda: self._spawn(child))
        return child

    def _await_ready(self, child: _Child) -> ChildInfo:
        spec, proc = child.spec, child.proc
        assert proc is not None
        deadline = child.ready_deadline
        while True:
            if self._stopping:
                raise SupervisorError(f"stopped while waiting for {spec.name} to be ready")
            rc = proc.poll()
            if rc is None:
                ports = self._probe(child)
                if ports is not None:
                    with self._lock:
                        if not self._stopping:
                            self._became_ready(child, ports)
                            return self._info(child)
            if rc is not None:
                self._give_up(child)
                raise SupervisorError(
                    f"{spec.name} exited with code {rc} before it was ready; see its log {child.log_path}"
                    + self._tail_text(child)
                )
            if time.monotonic() >= deadline:
                self._give_up(child)
                raise SupervisorError(
                    f"{spec.name} was not ready within {spec.ready_timeout:.0f}s "
                    f"(port file {child.port_file}, health {spec.health_service!r}); "
                    f"see its log {child.log_path}" + self._tail_text(child)
                )
            time.sleep(0.1)

    def remove(self, name: str) -> ChildInfo:
        """Stop one child for good and forget it (scaling down): SIGTERM, so it drains
        (a service deregisters and turns NOT_SERVING first), SIGKILL to its process group
        after `grace_seconds`. It is not restarted; its name can be started again.
        KeyError for an unknown name."""
        with self._lock:
            if self._stopping:
                raise SupervisorError(f"cannot remove {name}: the supervisor is stopping")
            child = next((c for c in self._children if c.spec.name == name), None)
            if child is None:
                raise KeyError(name)
        self._terminate([child])
        with self._lock:
            if child in self._children:
                self._children.remove(child)
            child.port_file.unlink(missing_ok=True)
            self._event(child, "removed")
            return self._info(child)

    def info(self, name: str) -> ChildInfo:
        with self._lock:
            for child in self._children:
                if child.spec.name == name:
                    return self._info(child)
        raise KeyError(name)

    def children(self) -> list[ChildInfo]:
        """Snapshots in start order."""
        with self._lock:
            return [self._info(c) for c in self._children]

    def wait_running(self, name: str, timeout: float, min_restarts: int = 0) -> ChildInfo:
        """Block until `name` is running with at least `min_restarts` restarts; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.info(name)
            if info.state == "running" and info.restarts >= min_restarts:
                return info
            if info.state == "failed":
                raise SupervisorError(f"{name} failed; see its log {info.log_path}")
            time.sleep(0.05)
        raise TimeoutError(f"{name} was not running (restarts >= {min_restarts}) within {timeout}s")

    def hurry(self) -> None:
        """Make a stop in progress skip the remaining grace periods (a second Ctrl-C)."""
        self._hurry.set()

    def stop(self) -> None:
        """Stop every child, group by group in reverse start order, then the owner
        thread. Idempotent.

        Called from the main thread, a further Ctrl-C/SIGTERM during the stop
        skips the remaining grace periods instead of aborting the stop.
        """
        with self._lock:
            if self._closed.is_set():
                return
            self._stopping = True
            groups: dict[int, list[_Child]] = {}
            for child in reversed(self._children):
                groups.setdefault(child.group, []).append(child)
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: self.hurry())
        try:
            for group in sorted(groups, reverse=True):
                self._terminate(groups[group])
            self._closed.set()
            self._owner.join(timeout=5)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- owner thread -----------------------------------------------------

    def _on_owner(self, fn: Callable[[], Any]) -> Any:
        if threading.current_thread() is self._owner:
            return fn()
        fut: Future[Any] = Future()
        self._calls.put((fn, fut))
        return fut.result()

    def _run_owner(self) -> None:
        while not self._closed.is_set():
            try:
                fn, fut = self._calls.get(timeout=0.1)
            except queue.Empty:
                pass
            else:
                try:
                    fut.set_result(fn())
                except BaseException as e:
                    fut.set_exception(e)
                continue
            try:
                self._tick()
            except Exception:
                with contextlib.suppress(OSError, ValueError):
                    log.exception("supervisor tick failed")
        # Fail any call that raced with close, so no caller waits forever.
        while True:
            try:
                _, fut = self._calls.get_nowait()
            except queue.Empty:
                break
            fut.set_exception(SupervisorError("the supervisor is stopped"))

    def _tick(self) -> None:
        now = time.monotonic()
        probing: list[_Child] = []
        with self._lock:
            if self._stopping:
                return
            for child in self._children:
                if child.state in ("running", "restarting"):
                    assert child.proc is not None
                    rc = child.proc.poll()
                    if rc is not None:
                        self._unexpected_exit(child, rc, now)
                    elif child.state == "restarting":
                        probing.append(child)
                    elif child.failures_in_row and now - child.started_at >= self.stable_seconds:
                        child.failures_in_row = 0
                elif child.state == "backoff" and now >= child.next_restart_at:
                    child.restarts += 1
                    RESTARTS.labels(child.spec.name).inc()
                    self._spawn(child)
                    child.state = "restarting"
        # Health probes are RPCs: keep them outside the lock.
        for child in probing:
            ports = self._probe(child)
            with self._lock:
                if self._stopping or child.state != "restarting":
                    return
                if ports is not None:
                    self._became_ready(child, ports)
                elif time.monotonic() >= child.ready_deadline:
                    self._event(child, "restart_timeout")
                    self._kill_group(child)
                    assert child.proc is not None
                    self._unexpected_exit(child, child.proc.wait(), time.monotonic())

    # --- internals (call with the lock held where state changes) ---------

    def _command(self, child: _Child) -> list[str]:
        return [
            self.python,
            "-m",
            child.spec.module,
            *child.spec.args,
            "--host",
            self.host,
            "--port",
            str(child.port or 0),
            "--port-file",
            str(child.port_file),
            "--log-format",
            self.log_format,
            "--log-level",
            self.log_level,
        ]

    def _spawn(self, child: _Child) -> None:
        """Fork the child (owner thread only)."""
        assert threading.current_thread() is self._owner
        # A stale port file (left by a kill -9) would look like readiness.
        child.port_file.unlink(missing_ok=True)
        cmd = self._command(child)
        env = {**os.environ, **self.env, **child.spec.env, PARENT_PID_ENV: str(os.getpid())}
        with open(child.log_path, "ab") as logf:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            logf.write(f"--- {stamp} mlmesh supervisor: start #{child.restarts}: {' '.join(cmd)}\n".encode())
            logf.flush()
            child.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                process_group=0,  # its own group: stop() signals the child and what it started
                close_fds=True,
            )
        child.started_at = time.monotonic()
        child.ready_deadline = child.started_at + child.spec.ready_timeout
        self._event(child, "started", pid=child.proc.pid, port=child.port or 0)

    def _probe(self, child: _Child) -> dict[str, Any] | None:
        """The port file's contents once the child is ready, else None. Takes no lock."""
        ports = _read_port_file(child.port_file)
        if ports is None:
            return None
        if child.port is not None and ports["port"] != child.port:
            # Restarted on another port: callers hold the old address, so this is no good.
            return None
        if child.spec.health_service is not None:
            status = check_health(f"{self.host}:{ports['port']}", child.spec.health_service, timeout=1.0)
            if status != "SERVING":
                return None
        return ports

    def _became_ready(self, child: _Child, ports: dict[str, Any]) -> None:
        restarted = child.state == "restarting"
        child.ports = ports
        child.port = int(ports["port"])
        child.state = "running"
        self._event(child, "restarted" if restarted else "ready", port=child.port)

    def _unexpected_exit(self, child: _Child, rc: int, now: float) -> None:
        self._event(child, "exited", returncode=rc)
        if child.proc is not None:
            # Grandchildren (Envoy under the gateway) could hold the port we restart on.
            self._kill_leftovers(child.proc.pid)
        child.failures_in_row += 1
        if child.failures_in_row > self.restart_limit:
            child.state = "failed"
            self._event(child, "failed", failures=child.failures_in_row, log=str(child.log_path))
            return
        delay = min(self.backoff_max, self.backoff_initial * 2 ** (child.failures_in_row - 1))
        child.state = "backoff"
        child.next_restart_at = now + delay
        self._event(child, "backoff", delay=round(delay, 3))

    def _give_up(self, child: _Child) -> None:
        with self._lock:
            self._kill_group(child)
            child.state = "failed"
            self._event(child, "failed")

    def _kill_group(self, child: _Child) -> None:
        if child.proc is None:
            return
        _signal_group(child.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(timeout=5)

    def _kill_leftovers(self, *pgids: int) -> None:
        """End what is left of these process groups (grandchildren): SIGTERM, 2 s, SIGKILL."""
        alive = [pgid for pgid in pgids if _group_alive(pgid)]
        for pgid in alive:
            _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 2.0
        while any(_group_alive(pgid) for pgid in alive) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pgid in alive:
            _signal_group(pgid, signal.SIGKILL)

    def _terminate(self, children: Sequence[_Child]) -> None:
        """Stop children that do not depend on each other, all at once; return when
        every one of them and its process group is gone."""
        procs: list[tuple[_Child, subprocess.Popen[bytes]]] = []
        with self._lock:
            for child in children:
                if child.proc is None or child.state == "stopped":
                    child.state = "stopped"
                else:
                    child.state = "stopping"
                    procs.append((child, child.proc))
        running = [(child, proc) for child, proc in procs if proc.poll() is None]
        for child, proc in running:
            self._event(child, "stopping", pid=proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds
        while (
            any(proc.poll() is None for _, proc in running)
            and time.monotonic() < deadline
            and not self._hurry.is_set()
        ):
            time.sleep(0.05)
        for child, proc in running:
            if proc.poll() is None:
                self._event(child, "killed", pid=proc.pid)
                _signal_group(proc.pid, signal.SIGKILL)
        for _, proc in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self._kill_leftovers(*(proc.pid for _, proc in procs))
        with self._lock:
            for child, proc in procs:
                child.state = "stopped"
                self._event(child, "stopped", returncode=proc.returncode)

    def _event(self, child: _Child, what: str, **fields: Any) -> None:
        self.events.append((time.time(), child.spec.name, what))
        level = "warning" if what in ("exited", "backoff", "restart_timeout", "killed") else "info"
        if what == "failed":
            level = "error"
        # A closed stderr must not stop supervision.
        with contextlib.suppress(OSError, ValueError):
            getattr(log, level)(what, service=child.spec.name, **fields)

    def _tail_text(self, child: _Child) -> str:
        tail = log_tail(child.log_path)
        return f"\n--- last lines of {child.log_path} ---\n{tail}" if tail else ""

    def _info(self, child: _Child) -> ChildInfo:
        return ChildInfo(
            name=child.spec.name,
            state=child.state,
            pid=child.proc.pid if child.proc is not None else None,
            port=child.port,
            host=self.host,
            ports=dict(child.ports),
            restarts=child.restarts,
            log_path=child.log_path,
        )


def terminate_on_signals() -> None:
    """Make SIGTERM behave like Ctrl-C in the main thread (KeyboardInterrupt), so
    `with Supervisor(...)` blocks unwind and stop their children."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
