"""Process fixtures: real fake-serving replicas and a real gateway (Envoy), torn down always."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlmesh.cli.suite import child_env

from gateway.xds.config import DEFAULT_CONFIG_PATH

REPO = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "test-admin-token-0123456789"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    ports: dict[str, int]
    log_path: Path
    # A gateway's control plane (python -m gateway.xds), started just before it.
    control_plane: Proc | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.ports['port']}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout` passes; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def serving_hosts_healthy(clusters: str) -> int:
    """Healthy hosts of clusters `serving` and `serving_keyed` in Envoy's admin /clusters text
    (not the control plane's `xds` cluster or the other services')."""
    return sum(
        1
        for line in clusters.splitlines()
        if line.startswith(("serving::", "serving_keyed::")) and line.endswith("::health_flags::healthy")
    )


def write_config(path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """The default gateway.yaml with `edit` applied to its data, written to `path`."""
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))
    return path


def listener_of(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(x for x in data["listeners"] if x["name"] == name)


@dataclass
class ProcessGroup:
    """Starts processes and guarantees they are gone on close (SIGTERM, then SIGKILL)."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)
    # Envoy pids reported by gateways: killed too, in case a test killed its launcher.
    extra_pids: list[int] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], timeout: float = START_TIMEOUT) -> Proc:
        port_file = self.workdir / f"{name}.ports.json"
        log_path = self.workdir / f"{name}.log"
        port_file.unlink(missing_ok=True)
        env = {**os.environ, **child_env()}
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                [sys.executable, *args, "--port-file", str(port_file)],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        proc = Proc(name, popen, {}, log_path)
        self.procs.append(proc)
        deadline = time.monotonic() + timeout
        while True:
            if port_file.exists():
                proc.ports = json.loads(port_file.read_text())
                if "envoy_pid" in proc.ports:
                    self.extra_pids.append(proc.ports["envoy_pid"])
                return proc
            if popen.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {popen.returncode} before serving:\n{proc.log()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{name} did not write {port_file} within {timeout}s:\n{proc.log()[-3000:]}"
                )
            time.sleep(0.05)

    def backend(self, replica_id: str) -> Proc:
        return self.spawn(
            replica_id,
            [
                "-m",
                "gateway.tests.fake_serving",
                "--replica-id",
                replica_id,
                "--port",
                "0",
                "--metrics-port",
                "-1",
                "--drain-seconds",
                "0.5",
                "--grace-seconds",
                "2",
            ],
        )

    def control_plane(self, name: str, backends: list[Proc], *extra: str, port: int = 0) -> Proc:
        """The xDS control plane, its registry naming `backends` as the serving instances."""
        registry = "static:serving=" + ",".join(b.addr for b in backends)
        args = ["-m", "gateway.xds", "--registry", registry, "--port", str(port), "--metrics-port", "0"]
        return self.spawn(name, [*args, "--admin-token", ADMIN_TOKEN, *extra])

    def gateway(self, name: str, backends: list[Proc], *extra: str, xds: tuple[str, ...] = ()) -> Proc:
        """A control plane (`xds` are its extra flags) and a gateway whose Envoy it configures."""
        cp = self.control_plane(f"{name}-xds", backends, *xds)
        gw = self.static_gateway(name, [], "--xds-addr", cp.addr, *extra)
        gw.control_plane = cp
        return gw

    def static_gateway(self, name: str, backends: list[Proc], *extra: str) -> Proc:
        """A gateway whose Envoy has a static bootstrap (`--backends`), or the flags in `extra`."""
        return self.spawn(
            name,
            [
                "-m",
                "gateway",
                *(["--backends", ",".join(b.addr for b in backends)] if backends else []),
                "--work-dir",
                str(self.workdir / name),
                "--port",
                "0",
                "--grace-seconds",
                "3",
                "--drain-seconds",
                "0.2",
                *extra,
            ],
        )

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(STOP_TIMEOUT)
        for pid in self.extra_pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def group(tmp_path: Path) -> Iterator[ProcessGroup]:
    g = ProcessGroup(tmp_path)
    try:
        yield g
    finally:
        g.close()


@dataclass
class Mesh:
    """Two replicas (r0, r1) behind one gateway."""

    backends: list[Proc]
    gateway: Proc

    @property
    def http_port(self) -> int:
        return self.gateway.ports["port"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    g = ProcessGroup(tmp_path_factory.mktemp("mesh"))
    try:
        backends = [g.backend("r0"), g.backend("r1")]
        yield Mesh(backends, g.gateway("gw", backends))
    finally:
        g.close()
