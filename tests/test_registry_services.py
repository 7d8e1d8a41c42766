"""Real services started with `--registry file://...` appear in the registry once SERVING
(under their registry names, shards with their index) and leave it on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlmesh.clients import check_health
from mlmesh.discovery import Instance
from mlmesh.discovery.file import FileRegistry

pytestmark = pytest.mark.integration


def _start(module: str, args: list[str], log: Path, port_file: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", module, "--port", "0", "--port-file", str(port_file), *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _wait_file(path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{path.name} not written (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, tuple]]]:
    """ingest and paramserver shard 1 of 2, registered in one file registry."""
    root = tmp_path_factory.mktemp("suite")
    registry = root / "registry"
    common = ["--registry", f"file://{registry}", "--metrics-port", "-1", "--drain-seconds", "1"]
    specs = {
        "ingest": ("ingest_svc", ["--data-dir", str(root / "ingest")]),
        "paramserver": (
            "paramserver_svc",
            ["--num-shards", "2", "--shard-index", "1", "--checkpoint-dir", str(root / "ps1")],
        ),
    }
    started: dict[str, tuple] = {}
    try:
        for name, (module, args) in specs.items():
            log, port_file = root / f"{name}.log", root / f"{name}.port"
            started[name] = (_start(module, [*args, *common], log, port_file), log, port_file)
        for name, (proc, log, port_file) in list(started.items()):
            started[name] = (proc, log, _wait_file(port_file, proc, log)["port"])
        yield registry, started
    finally:
        for proc, *_ in started.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


async def _healthy(registry: Path, service: str, timeout: float = 10) -> tuple[Instance, ...]:
    reg = FileRegistry(registry, interval=0.2)
    try:
        deadline = time.monotonic() + timeout
        while not (found := await reg.healthy(service)) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return found
    finally:
        await reg.close()


def test_serving_services_are_registered_under_their_names(services: tuple[Path, dict[str, tuple]]) -> None:
    registry, started = services
    (ingest,) = asyncio.run(_healthy(registry, "ingest"))
    assert (ingest.host, ingest.port) == ("127.0.0.1", started["ingest"][2])
    assert ingest.health_service == "mlmesh.ingest.v1.IngestService"
    assert check_health(ingest.addr, ingest.health_service) == "SERVING"
    (shard,) = asyncio.run(_healthy(registry, "paramserver"))
    assert shard.port == started["paramserver"][2]
    assert (shard.meta["shard"], shard.meta["num_shards"]) == ("1", "2")


def test_sigterm_removes_the_instance_before_it_stops(services: tuple[Path, dict[str, tuple]]) -> None:
    registry, started = services
    proc, log, port = started["ingest"]
    record = registry / "ingest" / f"ingest-127.0.0.1-{port}.json"
    assert record.exists()
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while record.exists():
        assert time.monotonic() < deadline, "record still there 5 s after SIGTERM"
        time.sleep(0.02)
    assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    assert asyncio.run(_healthy(registry, "ingest", timeout=0)) == ()
    # The shard is unaffected.
    assert len(asyncio.run(_healthy(registry, "paramserver"))) == 1
