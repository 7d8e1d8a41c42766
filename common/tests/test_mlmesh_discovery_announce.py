"""run_service's self-registration (`--registry`), on the real tiny service over real gRPC."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlmesh.clients import check_health
from mlmesh.discovery.announce import registry_name
from mlmesh.discovery.file import FileRegistry
from mlmesh.settings import ServiceSettings
from mlmesh_testutil import popen, tiny_env, wait_for_file

pytestmark = pytest.mark.integration


def _tiny(tmp_path: Path, spawn: list[subprocess.Popen[bytes]], *extra: str) -> tuple[subprocess.Popen, Path]:
    port_file = tmp_path / "tiny.json"
    args = ["-m", "mlmesh_tinysvc", "--name", "tiny", "--port-file", str(port_file), *extra]
    proc = popen(args, tmp_path / "tiny.log")
    spawn.append(proc)
    return proc, port_file


def _wait(what: str, cond: object, timeout: float = 10.0) -> float:
    started = time.monotonic()
    while not cond():  # type: ignore[operator]
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_serving_instance_registers_and_sigterm_deregisters_it_before_draining(
    tmp_path: Path, spawn: list[subprocess.Popen[bytes]]
) -> None:
    reg_dir = tmp_path / "registry"
    proc, port_file = _tiny(tmp_path, spawn, "--registry", f"file://{reg_dir}", "--drain-seconds", "2")
    wait_for_file(port_file)
    port = json.loads(port_file.read_text())["port"]
    record = reg_dir / "tiny" / f"tiny-127.0.0.1-{port}.json"
    _wait("record written", record.exists)
    rec = json.loads(record.read_text())
    assert (rec["host"], rec["port"], rec["pid"], rec["health_service"]) == ("127.0.0.1", port, proc.pid, "")

    async def healthy_ports() -> list[int]:
        reg = FileRegistry(reg_dir)
        try:
            return [i.port for i in await reg.healthy("tiny")]
        finally:
            await reg.close()

    assert asyncio.run(healthy_ports()) == [port]
    os.kill(proc.pid, signal.SIGTERM)
    _wait("record removed", lambda: not record.exists(), timeout=3)
    # Deregistered first: the server is still draining (NOT_SERVING) and has not stopped.
    assert check_health(f"127.0.0.1:{port}", "", timeout=1) == "NOT_SERVING"
    assert proc.wait(timeout=15) == 0
    log = (tmp_path / "tiny.log").read_text()
    assert log.index("deregistered") < log.index("stopping")


def test_an_unreachable_registry_is_retried_in_the_background_not_fatal(
    tmp_path: Path, spawn: list[subprocess.Popen[bytes]]
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the registry directory should be")
    reg_dir = blocker / "registry"
    proc, port_file = _tiny(tmp_path, spawn, "--registry", f"file://{reg_dir}")
    wait_for_file(port_file)
    port = json.loads(port_file.read_text())["port"]
    assert check_health(f"127.0.0.1:{port}", "") == "SERVING"
    _wait("failure logged", lambda: "registration failed" in (tmp_path / "tiny.log").read_text())
    blocker.unlink()
    _wait("registered once the registry is usable", (reg_dir / "tiny").exists, timeout=20)
    assert proc.poll() is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("zookeeper://h:1", "unknown scheme 'zookeeper'"),
        ("file:relative", "absolute directory"),
        ("consul://:8500", "no agent host"),
        ("consul://h:port", "Port could not be cast"),
        ("static:serving=nohostport", "not HOST:PORT"),
    ],
)
def test_a_bad_registry_url_exits_2_naming_the_setting(tmp_path: Path, url: str, reason: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mlmesh_tinysvc", "--registry", url],
        env={**os.environ, **tiny_env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "invalid setting registry (--registry / MLMESH_TINY_REGISTRY)" in proc.stderr
    assert reason in proc.stderr


def test_registry_names_of_the_services() -> None:
    assert [
        registry_name(n)
        for n in ("ingest", "paramserver_svc", "trainer-coordinator", "trainer-worker", "serving_svc")
    ] == ["ingest", "paramserver", "trainer", "trainer-worker", "serving"]
    assert registry_name("My Tool") == "my-tool"
    assert registry_name("9lives") == "s-9lives"


def test_the_advertised_host_is_the_bound_one_unless_wildcard_or_overridden() -> None:
    assert ServiceSettings(host="127.0.0.1").advertised_host() == "127.0.0.1"
    assert ServiceSettings(host="0.0.0.0").advertised_host() == socket.gethostname()
    assert ServiceSettings(host="::", advertise_host="node-3.ml.svc").advertised_host() == "node-3.ml.svc"
