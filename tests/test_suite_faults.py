"""`mlmesh up` under faults: a service killed with SIGKILL comes back on the same
port; SIGTERM to `mlmesh up` stops everything it started."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import grpc
import pytest
from e2e_util import mlmesh, service_entry, stop, tail, wait_gone, wait_json, wait_restarted
from mlmesh.clients import ServingClient, check_health

pytestmark = pytest.mark.faults

UP_TIMEOUT = 240


def test_killed_services_come_back_on_the_same_port_and_sigterm_stops_all(tmp_path: Path) -> None:
    root = tmp_path / "suite"
    log = tmp_path / "up.log"
    proc = mlmesh(
        ["up", "--root", str(root), "--shards", "1", "--replicas", "1", "--workers", "1"], log, tmp_path
    )
    try:
        suite_file = root / "run" / "suite.json"
        suite = wait_json(suite_file, UP_TIMEOUT, proc, log)
        assert len(suite["services"]) == 7  # with the gateway's xDS control plane
        pids = [s["pid"] for s in suite["services"]]

        # A shard: back on the same address, healthy.
        shard = service_entry(suite, "ps-0")
        os.kill(shard["pid"], signal.SIGKILL)
        back = wait_restarted(suite_file, "ps-0", shard["pid"])
        assert back["addr"] == shard["addr"] == suite["ps"][0]
        assert check_health(back["addr"], "mlmesh.paramserver.v1.ParameterServerService") == "SERVING"

        # The gateway (and the Envoy it runs): the same listener answers again.
        gateway = service_entry(suite, "gateway")
        os.kill(gateway["pid"], signal.SIGKILL)
        back = wait_restarted(suite_file, "gateway", gateway["pid"])
        assert back["addr"] == gateway["addr"] == suite["gateway_grpc"]
        with ServingClient(back["addr"], timeout=10) as client:
            with pytest.raises(grpc.RpcError) as e:
                client.model_status("no-such-model")
            assert e.value.code() == grpc.StatusCode.NOT_FOUND  # answered by the replica behind Envoy

        # The control plane: restarted on its port; Envoy reconnects and keeps serving.
        xds = service_entry(suite, "xds")
        os.kill(xds["pid"], signal.SIGKILL)
        xds_back = wait_restarted(suite_file, "xds", xds["pid"])
        assert xds_back["addr"] == xds["addr"]
        with ServingClient(back["addr"], timeout=10) as client:
            with pytest.raises(grpc.RpcError) as e:
                client.model_status("no-such-model")
            assert e.value.code() == grpc.StatusCode.NOT_FOUND

        pids += [
            back["pid"],
            xds_back["pid"],
            service_entry(json.loads(suite_file.read_text()), "ps-0")["pid"],
        ]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, tail(log)
    finally:
        stop(proc)
        leftovers = wait_gone(str(root), timeout=20)
    assert leftovers == [], leftovers
    assert not any(_alive(p) for p in pids)
    assert not (root / "run" / "suite.json").exists()
    assert "ps-0: restarted" in log.read_text()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_demo_fails_clearly_when_a_service_cannot_start_and_stops_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "suite"
    log = tmp_path / "demo.log"
    # A bad setting reaches ingest_svc through its environment: it exits 2 before serving.
    bad = {"MLMESH_INGEST_DEFAULT_MAX_PARTITION_BYTES": "1"}
    proc = mlmesh(
        ["demo", "--limit-train", "100", "--limit-test", "100", "--root", str(root)], log, tmp_path, bad
    )
    try:
        rc = proc.wait(timeout=120)
    finally:
        stop(proc)
        leftovers = wait_gone(str(root), timeout=20)
    assert rc == 1, tail(log)
    output = log.read_text()
    assert "ingest exited with code 2 before it was ready" in output
    assert str(root / "run" / "logs" / "ingest.log") in output
    summary = json.loads((root / "demo-summary.json").read_text())
    assert summary["ok"] is False
    assert "default_max_partition_bytes" in summary["error"]  # the log tail names the setting
    assert leftovers == [], leftovers
