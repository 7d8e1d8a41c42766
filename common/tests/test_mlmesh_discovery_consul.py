"""The consul backend against the FAKE Consul agent (consul_agent_fake.py: the documented
endpoints we use, running the gRPC checks itself) and real tiny gRPC services; plus a live
test against a real agent when one is available."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from consul_agent_fake import ConsulAgentFake
from mlmesh.discovery import Instance, RegistryError, open_registry
from mlmesh.discovery.consul import ConsulRegistry, consul_url_address
from mlmesh_testutil import free_port, popen, wait_for_file

pytestmark = pytest.mark.integration


def _start_tiny(folder: Path, name: str, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port_file = folder / f"{name}.json"
    args = ["-m", "mlmesh_tinysvc", "--name", name, "--port-file", str(port_file), *extra]
    proc = popen(args, folder / f"{name}.log")
    wait_for_file(port_file)
    return proc, json.loads(port_file.read_text())["port"]


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def tiny_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A tiny gRPC service (SERVING) that stays up for the module."""
    proc, port = _start_tiny(tmp_path_factory.mktemp("tiny"), "steady")
    try:
        yield port
    finally:
        _kill(proc)


@pytest.fixture
def agent() -> Iterator[ConsulAgentFake]:
    fake = ConsulAgentFake().start()
    try:
        yield fake
    finally:
        fake.stop()


def _registry(agent: ConsulAgentFake, **kw: float) -> ConsulRegistry:
    opts = {"check_interval": 0.2, "check_timeout": 0.5, "wait_seconds": 5.0, **kw}
    return ConsulRegistry("127.0.0.1", agent.port, **opts)


async def _until(what: str, probe: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(0.05)


def test_register_sends_a_grpc_check_with_deregister_critical_after(
    agent: ConsulAgentFake, tiny_port: int
) -> None:
    inst = Instance(
        service="serving",
        host="127.0.0.1",
        port=tiny_port,
        health_service="",
        meta={"shard": "3"},
    )

    async def scenario() -> None:
        reg = _registry(agent, deregister_critical_after=7)
        try:
            await reg.register(inst)
            svc = agent._services[inst.instance_id]
            assert (svc.name, svc.address, svc.port, svc.meta) == (
                "serving",
                "127.0.0.1",
                tiny_port,
                {"shard": "3"},
            )
            assert (svc.grpc_target, svc.interval, svc.deregister_after) == (inst.addr, 0.2, 7.0)
            await _until("check passing", lambda: _healthy_is(reg, "serving", [tiny_port]))
            assert (await reg.healthy("serving"))[0] == inst  # meta and health service round-trip
        finally:
            await reg.close()

    asyncio.run(scenario())


async def _healthy_is(reg: ConsulRegistry, service: str, ports: list[int]) -> bool:
    return [i.port for i in await reg.healthy(service)] == ports


def test_health_service_travels_in_meta_and_comes_back(agent: ConsulAgentFake, tiny_port: int) -> None:
    inst = Instance(service="tiny", host="127.0.0.1", port=tiny_port, health_service="no.such.Service")

    async def scenario() -> None:
        reg = _registry(agent)
        try:
            await reg.register(inst)
            assert agent._services[inst.instance_id].grpc_target == f"{inst.addr}/no.such.Service"
            await asyncio.sleep(0.6)  # a few checks: NOT_FOUND for that service is critical
            assert await reg.healthy("tiny") == ()
        finally:
            await reg.close()

    asyncio.run(scenario())


def test_watch_uses_blocking_queries_and_follows_deregistration(
    agent: ConsulAgentFake, tiny_port: int
) -> None:
    inst = Instance(service="ingest", host="127.0.0.1", port=tiny_port)

    async def scenario() -> list[list[int]]:
        reg = _registry(agent)
        seen: list[list[int]] = []

        async def watcher() -> None:
            async for instances in reg.watch("ingest"):
                seen.append([i.port for i in instances])

        task = asyncio.create_task(watcher())
        try:
            await reg.register(inst)
            await _until("watcher sees the instance", lambda: _last(seen, [tiny_port]))
            before = len([r for r in agent.requests if r.startswith("GET")])
            await asyncio.sleep(1.5)  # nothing changes: the query blocks instead of polling
            idle_gets = len([r for r in agent.requests if r.startswith("GET")]) - before
            assert idle_gets <= 2, idle_gets
            await reg.deregister(inst)
            await reg.deregister(inst)  # unknown now: ignored
            await _until("watcher sees it go", lambda: _last(seen, []))
        finally:
            task.cancel()
            await reg.close()
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] == [] and seen[-1] == []
    gets = [r for r in agent.requests if r.startswith("GET /v1/health/service/ingest")]
    assert all("passing=1" in g for g in gets)
    assert any("index=" in g and "wait=5s" in g for g in gets)


async def _last(seen: list[list[int]], ports: list[int]) -> bool:
    return bool(seen) and seen[-1] == ports


def test_kill_9_fails_the_agents_check_and_the_instance_is_reaped(
    agent: ConsulAgentFake, tmp_path: Path
) -> None:
    proc, port = _start_tiny(tmp_path, "victim")
    inst = Instance(service="serving", host="127.0.0.1", port=port)

    async def scenario() -> float:
        reg = _registry(agent, deregister_critical_after=1)
        try:
            await reg.register(inst)
            await _until("passing", lambda: _healthy_is(reg, "serving", [port]))
            killed = time.monotonic()
            _kill(proc)
            await _until("critical", lambda: _healthy_is(reg, "serving", []))
            noticed = time.monotonic() - killed
            await _until("reaped by the agent", lambda: _missing(agent, inst.instance_id))
            return noticed
        finally:
            await reg.close()

    assert asyncio.run(scenario()) < 2.0


async def _missing(agent: ConsulAgentFake, sid: str) -> bool:
    return sid not in agent._services


def test_an_unreachable_agent_reads_as_no_instances_and_is_retried() -> None:
    async def scenario() -> None:
        reg = ConsulRegistry("127.0.0.1", free_port(), wait_seconds=1)
        try:
            assert await reg.healthy("serving") == ()
        finally:
            await reg.close()

    asyncio.run(scenario())


def test_a_service_started_with_a_consul_registry_registers_and_leaves_on_sigterm(
    agent: ConsulAgentFake, tmp_path: Path
) -> None:
    proc, port = _start_tiny(tmp_path, "svc", "--registry", f"consul://{agent.addr}")
    sid = f"svc-127.0.0.1-{port}"
    deadline = time.monotonic() + 10
    while sid not in agent._services or agent._services[sid].status != "passing":
        assert time.monotonic() < deadline, "not registered and passing within 10s"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert sid not in agent._services
    assert any(r == f"PUT /v1/agent/service/deregister/{sid}" for r in agent.requests)


@pytest.mark.parametrize(
    ("url", "expected"),
    [("consul://10.0.0.5:8600", ("10.0.0.5", 8600)), ("consul://consul.service", ("consul.service", 8500))],
)
def test_consul_urls(url: str, expected: tuple[str, int]) -> None:
    assert consul_url_address(url) == expected
    assert isinstance(open_registry(url), ConsulRegistry)


@pytest.mark.parametrize(
    "url", ["consul://", "consul://h:8500/path", "consul://h:8500?dc=x", "consul://h:99999"]
)
def test_bad_consul_urls_are_refused(url: str) -> None:
    with pytest.raises(RegistryError, match="registry URL"):
        consul_url_address(url)


# --- against a real Consul agent, when there is one -----------------------


@pytest.fixture(scope="module")
def live_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    addr = os.environ.get("CONSUL_HTTP_ADDR", "")
    if addr:
        host, _, port = addr.split("://")[-1].rpartition(":")
        yield host, int(port)
        return
    binary = shutil.which("consul")
    if binary is None:
        pytest.skip("no real Consul agent: set CONSUL_HTTP_ADDR or put a `consul` binary on PATH")
    http = free_port()
    # Loopback only, ephemeral ports, no DNS or gRPC listeners.
    ports = {"dns": -1, "grpc": -1, "serf-lan": free_port(), "serf-wan": free_port(), "server": free_port()}
    args = [binary, "agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1", f"-http-port={http}"]
    args += [f"-{name}-port={value}" for name, value in ports.items()]
    log = tmp_path_factory.mktemp("consul") / "consul.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v1/status/leader", timeout=1) as r:
                    if r.read().strip(b'" \n'):
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"consul agent -dev did not elect a leader; see {log}"
            time.sleep(0.2)
        yield "127.0.0.1", http
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def test_live_agent_registers_checks_watches_and_deregisters(
    live_agent: tuple[str, int], tiny_port: int
) -> None:
    host, port = live_agent
    inst = Instance(
        service="mlmesh-live-test", host="127.0.0.1", port=tiny_port, instance_id=f"live-{os.getpid()}"
    )

    async def scenario() -> None:
        reg = ConsulRegistry(host, port, check_interval=1, wait_seconds=5)
        try:
            await reg.register(inst)
            await _until("passing on the real agent", lambda: _healthy_is(reg, inst.service, [tiny_port]), 30)
            await reg.deregister(inst)
            await _until("gone from the real agent", lambda: _healthy_is(reg, inst.service, []), 30)
        finally:
            await reg.close()

    asyncio.run(scenario())
