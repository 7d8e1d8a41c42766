"""The file registry against real tiny gRPC services: records, liveness from grpc.health.v1, kill -9."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import structlog
from mlmesh.discovery import Instance, RegistryError, open_registry
from mlmesh.discovery.file import FileRegistry, file_url_path
from mlmesh_testutil import free_port, popen, wait_for_file

pytestmark = pytest.mark.integration


def _start_tiny(folder: Path, name: str, *extra: str, port: int = 0) -> tuple[subprocess.Popen[bytes], dict]:
    port_file = folder / f"{name}.json"
    port_file.unlink(missing_ok=True)
    args = ["-m", "mlmesh_tinysvc", "--name", name, "--port", str(port), "--port-file", str(port_file)]
    proc = popen([*args, *extra], folder / f"{name}.log")
    wait_for_file(port_file)
    return proc, json.loads(port_file.read_text())


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict]]:
    """Two tiny services that stay up for the module: [{"port":..., "metrics_port":..., "pid":...}, ...]."""
    folder = tmp_path_factory.mktemp("tiny")
    started = [_start_tiny(folder, f"t{i}") for i in range(2)]
    try:
        yield [ports for _, ports in started]
    finally:
        for proc, _ in started:
            _kill(proc)


def _instance(port: int, service: str = "tiny", **kw: object) -> Instance:
    return Instance(service=service, host="127.0.0.1", port=port, **kw)  # type: ignore[arg-type]


async def _until(
    what: str, probe: Callable[[], Awaitable[bool]], timeout: float = 10.0, step: float = 0.05
) -> float:
    """Seconds until `probe()` is true; AssertionError naming `what` after `timeout`."""
    started = time.monotonic()
    while not await probe():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(step)
    return time.monotonic() - started


def _ports(instances: tuple[Instance, ...]) -> list[int]:
    return [i.port for i in instances]


def test_registered_instances_are_healthy_and_deregistered_ones_go(tmp_path: Path, tiny: list[dict]) -> None:
    async def scenario() -> None:
        reg = FileRegistry(tmp_path, interval=0.25)
        a, b = (_instance(t["port"], meta={"shard": str(n)}) for n, t in enumerate(tiny))
        try:
            await reg.register(a)
            await reg.register(b)
            record = json.loads((tmp_path / "tiny" / f"{a.instance_id}.json").read_text())
            assert {"host", "port", "health_service", "meta", "pid", "registered_at"} <= set(record)
            assert record["meta"] == {"shard": "0"} and record["pid"] == os.getpid()
            assert await reg.healthy("tiny") == tuple(sorted((a, b), key=lambda i: i.instance_id))
            await reg.deregister(a)
            assert not (tmp_path / "tiny" / f"{a.instance_id}.json").exists()
            await _until("deregistered instance leaves", lambda: _gone(reg, a.port))
            assert _ports(await reg.healthy("tiny")) == [b.port]
            assert await reg.healthy("nobody") == ()
        finally:
            await reg.close()

    asyncio.run(scenario())


async def _gone(reg: FileRegistry, port: int) -> bool:
    return port not in _ports(await reg.healthy("tiny"))


def test_an_unreachable_or_unknown_health_service_is_not_healthy(tmp_path: Path, tiny: list[dict]) -> None:
    async def scenario() -> None:
        reg = FileRegistry(tmp_path, interval=0.25)
        try:
            await reg.register(_instance(free_port(), instance_id="nobody-listens"))
            await reg.register(_instance(tiny[0]["port"], health_service="no.such.Service"))
            await reg.register(_instance(tiny[1]["port"]))
            assert _ports(await reg.healthy("tiny")) == [tiny[1]["port"]]
        finally:
            await reg.close()

    asyncio.run(scenario())


def test_kill_9_turns_an_instance_unhealthy_within_2s_and_a_restart_brings_it_back(tmp_path: Path) -> None:
    port = free_port()
    proc, _ = _start_tiny(tmp_path, "victim", port=port)

    async def scenario() -> None:
        nonlocal proc
        reg = FileRegistry(tmp_path / "reg")
        seen: list[tuple[float, list[int]]] = []

        async def watcher() -> None:
            async for instances in reg.watch("tiny"):
                seen.append((time.monotonic(), _ports(instances)))

        task = asyncio.create_task(watcher())
        try:
            await reg.register(_instance(port))
            await _until("instance healthy", lambda: _has(seen, [port]))
            killed = time.monotonic()
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            await _until("instance unhealthy", lambda: _has(seen, []))
            assert seen[-1][0] - killed < 2.0, f"kill -9 noticed after {seen[-1][0] - killed:.2f}s"
            # Its record is still there (nobody deregistered it), but it is not trusted.
            assert (tmp_path / "reg" / "tiny" / f"tiny-127.0.0.1-{port}.json").exists()
            proc, _ = _start_tiny(tmp_path, "victim", port=port)
            await _until("restarted instance healthy again", lambda: _has(seen, [port]))
        finally:
            task.cancel()
            await reg.close()
            _kill(proc)

    asyncio.run(scenario())


async def _has(seen: list[tuple[float, list[int]]], ports: list[int]) -> bool:
    return bool(seen) and seen[-1][1] == ports


def test_a_not_yet_serving_instance_is_reported_only_once_serving(tmp_path: Path) -> None:
    proc = popen(
        ["-m", "mlmesh_tinysvc", "--port", str(port := free_port()), "--start-delay", "1.5"],
        tmp_path / "slow.log",
    )

    async def scenario() -> None:
        reg = FileRegistry(tmp_path / "reg", interval=0.25)
        try:
            await reg.register(_instance(port))
            assert await reg.healthy("tiny") == ()
            waited = await _until("SERVING instance reported", lambda: _present(reg, port), timeout=15)
            assert waited > 0.3  # it was NOT_SERVING (or not bound) first
        finally:
            await reg.close()

    try:
        asyncio.run(scenario())
    finally:
        _kill(proc)


async def _present(reg: FileRegistry, port: int) -> bool:
    return port in _ports(await reg.healthy("tiny"))


def test_malformed_records_are_ignored_with_a_warning_naming_them(tmp_path: Path, tiny: list[dict]) -> None:
    folder = tmp_path / "tiny"
    folder.mkdir()
    bad = {
        "not-json.json": b"{not json",
        "no-host.json": json.dumps({"port": tiny[0]["port"]}).encode(),
        "bad-port.json": json.dumps({"host": "127.0.0.1", "port": 70000}).encode(),
        "port-is-text.json": json.dumps({"host": "127.0.0.1", "port": "80"}).encode(),
        "meta-not-strings.json": json.dumps({"host": "127.0.0.1", "port": 80, "meta": {"a": 1}}).encode(),
        "a-list.json": b"[1, 2]",
    }
    for name, data in bad.items():
        (folder / name).write_bytes(data)

    async def scenario() -> tuple[int, ...]:
        reg = FileRegistry(tmp_path, interval=0.25)
        try:
            await reg.register(_instance(tiny[0]["port"]))
            healthy = await reg.healthy("tiny")
            await asyncio.sleep(0.6)  # more rounds: each bad record is still warned about once
            return tuple(_ports(healthy))
        finally:
            await reg.close()

    with structlog.testing.capture_logs() as logs:
        ports = asyncio.run(scenario())
    assert ports == (tiny[0]["port"],)
    warned = [e["file"] for e in logs if e["event"] == "ignoring malformed registry record"]
    assert sorted(Path(f).name for f in warned) == sorted(bad)
    reasons = {Path(e["file"]).name: e["error"] for e in logs if "file" in e}
    assert "not JSON" in reasons["not-json.json"]
    assert "'host'" in reasons["no-host.json"]
    assert "70000" in reasons["bad-port.json"]


def test_watchers_in_one_process_share_one_checker(tmp_path: Path, tiny: list[dict]) -> None:
    port, metrics_port = tiny[1]["port"], tiny[1]["metrics_port"]

    async def scenario() -> int:
        reg = FileRegistry(tmp_path, interval=0.25)
        await reg.register(_instance(port))
        firsts: list[tuple[Instance, ...]] = []

        async def watcher() -> None:
            async for instances in reg.watch("tiny"):
                firsts.append(instances)

        tasks = [asyncio.create_task(watcher()) for _ in range(5)]
        try:
            await _until("every watcher saw the instance", lambda: _all_seen(firsts, 5))
            before = _health_checks(metrics_port)
            await asyncio.sleep(2.0)
            for _ in range(5):
                await reg.healthy("tiny")
            return _health_checks(metrics_port) - before
        finally:
            for t in tasks:
                t.cancel()
            await reg.close()

    checks = asyncio.run(scenario())
    # One checker at 0.25 s makes about 8 Checks in 2 s; five separate ones would make about 40.
    assert 4 <= checks <= 14, checks


async def _all_seen(firsts: list[tuple[Instance, ...]], n: int) -> bool:
    return len([f for f in firsts if f]) >= n


def _health_checks(metrics_port: int) -> int:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = resp.read().decode()
    key = 'mlmesh_grpc_requests_total{code="OK",method="Check",service="grpc.health.v1.Health"}'
    return int(float(next((ln.split()[-1] for ln in body.splitlines() if ln.startswith(key)), "0")))


def test_the_record_of_a_dead_process_is_reaped(tmp_path: Path) -> None:
    proc, ports = _start_tiny(tmp_path, "short-lived")

    async def scenario() -> None:
        reg = FileRegistry(tmp_path / "reg", interval=0.2, reap_after=0.5)
        record = tmp_path / "reg" / "tiny" / "dead.json"
        try:
            await reg.register(_instance(ports["port"], instance_id="dead"))
            # Written by this process, so make the record claim the tiny service's pid.
            rec = json.loads(record.read_text())
            record.write_text(json.dumps({**rec, "pid": proc.pid}))
            assert _ports(await reg.healthy("tiny")) == [ports["port"]]
            _kill(proc)
            await _until("dead record removed", lambda: _missing(record))
        finally:
            await reg.close()

    asyncio.run(scenario())


async def _missing(path: Path) -> bool:
    return not path.exists()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file://somehost/var/reg", "file registries are local"),
        ("file:relative/dir", "absolute directory"),
        ("file:///", "absolute directory"),
        ("file:///reg?x=1", "no query"),
    ],
)
def test_bad_file_urls_are_refused(url: str, reason: str) -> None:
    with pytest.raises(RegistryError, match=reason):
        file_url_path(url)


def test_file_url_opens_a_file_registry() -> None:
    reg = open_registry("file:///tmp/mlmesh-reg")
    assert isinstance(reg, FileRegistry) and reg.root == Path("/tmp/mlmesh-reg")
    assert file_url_path("file://localhost/srv/reg") == Path("/srv/reg")


def test_an_instance_id_that_cannot_name_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="cannot name a file"):
        asyncio.run(FileRegistry(tmp_path).register(_instance(5000, instance_id="../escape")))
