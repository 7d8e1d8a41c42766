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

import grpc
import pytest
from mlmesh.clients import TrainerClient, check_health, job_spec, rpc_error_text
from mlmesh.discovery import Instance
from mlmesh.discovery.file import FileRegistry
from mlmesh.discovery.resolve import Follower
from mlmesh.errors import NotFound

from trainer_svc.clients import CallPolicy, Connector
from trainer_svc.config import WorkerSettings
from trainer_svc.peers import WorkerPeers

pytestmark = pytest.mark.integration


def _start(module: str, args: list[str], log: Path, port_file: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args, "--port", "0", "--port-file", str(port_file)],
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
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, list]]]:
    """ingest, parameter-server shards 0 and 1, and a coordinator given no peer addresses,
    all registered in one file registry: {name: [proc, log, port]}."""
    root = tmp_path_factory.mktemp("suite")
    registry = root / "registry"
    common = ["--registry", f"file://{registry}", "--metrics-port", "-1", "--drain-seconds", "1"]
    specs = {
        "ingest": ["ingest_svc", "--data-dir", str(root / "ingest")],
        **{
            f"ps{i}": [
                *("paramserver_svc", "--num-shards", "2", "--shard-index", str(i)),
                *("--checkpoint-dir", str(root / f"ps{i}")),
            ]
            for i in range(2)
        },
        "coordinator": [
            *("trainer_svc", "coordinator", "--model-repo", str(root / "models")),
            *("--work-dir", str(root / "coordinator"), "--retry-seconds", "60"),
        ],
    }
    started: dict[str, list] = {}
    try:
        for name, (module, *args) in specs.items():
            log, port_file = root / f"{name}.log", root / f"{name}.port"
            started[name] = [_start(module, [*args, *common], log, port_file), log, port_file]
        for entry in started.values():
            entry[2] = _wait_file(entry[2], entry[0], entry[1])["port"]
        started["root"] = [None, None, root]
        yield registry, started
    finally:
        for entry in started.values():
            proc = entry[0]
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            if proc is not None:
                proc.wait(timeout=10)


async def _healthy(registry: Path, service: str, timeout: float = 10, count: int = 1) -> tuple[Instance, ...]:
    reg = FileRegistry(registry, interval=0.2)
    try:
        deadline = time.monotonic() + timeout
        while len(found := await reg.healthy(service)) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return found
    finally:
        await reg.close()


def _missing_dataset_error(coordinator_port: int) -> str:
    """What the coordinator says of a job on a dataset ingest does not have (it names ingest's address)."""
    spec = job_spec(model="mlmesh.models.fashion_cnn:build", train_dataset="no-such-dataset", model_name="m")
    with (
        TrainerClient(f"127.0.0.1:{coordinator_port}", timeout=120) as trainer,
        pytest.raises(grpc.RpcError) as err,
    ):
        trainer.create_job(spec)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND, rpc_error_text(err.value)
    return err.value.details()


def test_serving_services_are_registered_under_their_names(services: tuple[Path, dict[str, list]]) -> None:
    registry, started = services
    (ingest,) = asyncio.run(_healthy(registry, "ingest"))
    assert (ingest.host, ingest.port) == ("127.0.0.1", started["ingest"][2])
    assert ingest.health_service == "mlmesh.ingest.v1.IngestService"
    assert check_health(ingest.addr, ingest.health_service) == "SERVING"
    shards = asyncio.run(_healthy(registry, "paramserver", count=2))
    by_shard = {s.meta["shard"]: s.port for s in shards}
    assert by_shard == {"0": started["ps0"][2], "1": started["ps1"][2]}
    assert {s.meta["num_shards"] for s in shards} == {"2"}
    (trainer,) = asyncio.run(_healthy(registry, "trainer"))
    assert trainer.port == started["coordinator"][2]


def test_the_coordinator_found_ingest_through_the_registry(services: tuple[Path, dict[str, list]]) -> None:
    _, started = services
    error = _missing_dataset_error(started["coordinator"][2])
    assert f"does not exist in ingest (127.0.0.1:{started['ingest'][2]})" in error


def _restart_ingest(registry: Path, started: dict[str, list]) -> int:
    """SIGTERM ingest (its record must go before it exits), start it again on a new port; the port."""
    proc, log, port = started["ingest"]
    record = registry / "ingest" / f"ingest-127.0.0.1-{port}.json"
    assert record.exists()
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while record.exists():
        assert time.monotonic() < deadline, "record still there 5 s after SIGTERM"
        time.sleep(0.02)
    assert proc.poll() is None  # deregistered first, then drained
    assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    assert asyncio.run(_healthy(registry, "ingest", timeout=0)) == ()

    root = started["root"][2]
    args = ["--data-dir", str(root / "ingest"), "--registry", f"file://{registry}", "--metrics-port", "-1"]
    n = len(list(root.glob("ingest*.port"))) + 1
    log, port_file = root / f"ingest{n}.log", root / f"ingest{n}.port"
    proc = _start("ingest_svc", args, log, port_file)
    started["ingest"] = [proc, log, port_file]
    new_port = _wait_file(port_file, proc, log)["port"]
    started["ingest"][2] = new_port
    assert new_port != port
    return int(new_port)


def test_sigterm_deregisters_ingest_and_the_coordinator_follows_its_restart(
    services: tuple[Path, dict[str, list]],
) -> None:
    registry, started = services
    new_port = _restart_ingest(registry, started)
    deadline = time.monotonic() + 10
    while f"(127.0.0.1:{new_port})" not in (error := _missing_dataset_error(started["coordinator"][2])):
        assert time.monotonic() < deadline, f"coordinator still not at the new ingest: {error}"
        time.sleep(0.2)
    # The shards were not touched.
    assert len(asyncio.run(_healthy(registry, "paramserver", count=2))) == 2


def test_a_workers_connector_uses_the_registry_over_the_job_and_follows_ingest(
    services: tuple[Path, dict[str, list]],
) -> None:
    registry, started = services
    shard_addrs = [f"127.0.0.1:{started[f'ps{i}'][2]}" for i in range(2)]

    async def scenario() -> None:
        reg = FileRegistry(registry, interval=0.2)
        connector = Connector(CallPolicy(timeout=5.0, retry_seconds=20.0))
        followers = [
            Follower(reg, "ingest", connector.pin_ingest),
            Follower(reg, "paramserver", connector.pin_shards, shards=True),
        ]
        for f in followers:
            f.start_applying()
        try:
            while followers[0].addrs is None or followers[1].addrs is None:
                await asyncio.sleep(0.05)
            # A job handed out before the moves names addresses that are gone: the pins win.
            ingest, params = connector.connect("127.0.0.1:1", ["127.0.0.1:2", "127.0.0.1:3"])
            assert ingest.addr == f"127.0.0.1:{started['ingest'][2]}"
            assert params.addrs == shard_addrs
            with pytest.raises(NotFound):
                await ingest.get_dataset("no-such-dataset")
            new_port = await asyncio.to_thread(_restart_ingest, registry, started)
            # The same client, mid-"job": its next call (retried while ingest was away) reaches the new port.
            with pytest.raises(NotFound):
                await ingest.get_dataset("no-such-dataset")
            assert ingest.addr == f"127.0.0.1:{new_port}"
            assert connector.connect("127.0.0.1:1", ["127.0.0.1:2", "127.0.0.1:3"])[0] is ingest
        finally:
            for f in followers:
                await f.close()
            await connector.close()
            await reg.close()

    asyncio.run(scenario())


def test_a_worker_given_only_the_registry_finds_the_coordinator(
    services: tuple[Path, dict[str, list]], tmp_path: Path
) -> None:
    registry, started = services
    settings = WorkerSettings(registry=f"file://{registry}", cache_dir=tmp_path / "cache")

    async def resolve() -> str:
        peers = WorkerPeers(settings)
        try:
            return await peers.coordinator_addr()
        finally:
            await peers.close()

    assert asyncio.run(resolve()) == f"127.0.0.1:{started['coordinator'][2]}"


def test_a_coordinator_without_peer_addresses_or_registry_exits_2_naming_them(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer_svc",
            "coordinator",
            "--model-repo",
            str(tmp_path / "m"),
            "--work-dir",
            str(tmp_path / "w"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "ingest_addr and ps_addrs must be set" in proc.stderr
    assert "or --registry given to find them by name" in proc.stderr
