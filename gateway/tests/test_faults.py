"""Faults: replicas dying under traffic, the launcher's signals, Envoy dying, bad start-up input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
from mlmesh import tensor
from mlmesh.cli.suite import child_env
from mlmesh.serving.v1 import serving_pb2

from gateway.tests.conftest import REPO, ProcessGroup, listener_of, pid_alive, wait_until, write_config
from gateway.tests.http_util import HttpResponse, header, http, serving_stub

pytestmark = pytest.mark.faults


@dataclass
class Load:
    """Closed-loop clients (gRPC and JSON) through the gateway, recording every outcome."""

    port: int
    grpc_threads: int = 3
    json_threads: int = 1
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # (monotonic time, replica id or None, error or None)
    results: list[tuple[float, str | None, str | None]] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def _record(self, replica: str | None, error: str | None) -> None:
        with self.lock:
            self.results.append((time.monotonic(), replica, error))

    def _grpc_loop(self) -> None:
        request = serving_pb2.PredictRequest(model_name="m", inputs={"x": tensor.to_proto(np.ones(4))})
        channel, stub = serving_stub(f"127.0.0.1:{self.port}")
        with channel:
            while not self.stop.is_set():
                try:
                    _, call = stub.Predict.with_call(request, timeout=5)
                    self._record(header(call.initial_metadata(), "x-replica-id"), None)
                except grpc.RpcError as e:
                    self._record(None, f"grpc {e.code().name}: {e.details()}")

    def _json_loop(self) -> None:
        while not self.stop.is_set():
            try:
                r = http(self.port, "POST", "/v1/models/m:predict", {"instances": [[1, 2]]}, timeout=5)
                ok = r.status == 200 and r.json()["predictions"] == [[2, 4]]
                self._record(
                    r.headers.get("x-replica-id"), None if ok else f"http {r.status}: {r.body[:200]!r}"
                )
            except OSError as e:
                self._record(None, f"http {e!r}")

    def __enter__(self) -> Load:
        loops = [self._grpc_loop] * self.grpc_threads + [self._json_loop] * self.json_threads
        self.threads = [threading.Thread(target=fn, daemon=True) for fn in loops]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)

    def errors(self) -> list[str]:
        with self.lock:
            return [e for _, _, e in self.results if e is not None]

    def replicas_since(self, since: float) -> Counter[str | None]:
        with self.lock:
            return Counter(r for t, r, e in self.results if t >= since and e is None)


def test_replica_killed_mid_traffic_loses_no_requests(group: ProcessGroup) -> None:
    r0, r1 = group.backend("r0"), group.backend("r1")
    gw = group.gateway("gw", [r0, r1])
    with Load(gw.ports["port"]) as load:
        time.sleep(1.0)
        assert load.replicas_since(0).keys() == {"r0", "r1"}
        r0.popen.kill()  # SIGKILL: connections reset, no goodbye
        killed_at = time.monotonic()
        time.sleep(3.0)
    errors = load.errors()
    total = len(load.results)
    assert total > 200, f"too little traffic to judge: {total}"
    # Measured 0; retries on reset/connect-failure to another host cover the in-flight ones.
    assert len(errors) <= 1, errors[:5]
    # Active gRPC health checks (2 failures x 1 s) took the dead replica out of rotation.
    clusters = http(gw.ports["admin_port"], "GET", "/clusters").body.decode()
    flags = {line.split("::")[1]: line for line in clusters.splitlines() if "::health_flags::" in line}
    assert "failed_active_hc" in flags[r0.addr], flags
    assert flags[r1.addr].endswith("::healthy"), flags
    assert load.replicas_since(killed_at + 1.0).keys() == {"r1"}


def test_replica_stopped_gracefully_mid_traffic_loses_no_requests(group: ProcessGroup) -> None:
    r0, r1 = group.backend("r0"), group.backend("r1")
    gw = group.gateway("gw", [r0, r1])
    with Load(gw.ports["port"]) as load:
        time.sleep(0.8)
        r0.popen.send_signal(signal.SIGTERM)  # NOT_SERVING, drain, then stop
        assert r0.popen.wait(10) == 0
        time.sleep(1.0)
    assert load.errors() == []
    assert len(load.results) > 100


def test_sigterm_drains_in_flight_request_then_stops_envoy(group: ProcessGroup) -> None:
    r0 = group.backend("r0")
    gw = group.gateway("gw", [r0])
    envoy_pid = gw.ports["envoy_pid"]
    assert pid_alive(envoy_pid)
    outcome: dict[str, object] = {}

    def slow_call() -> None:
        r = http(
            gw.ports["port"],
            "POST",
            "/v1/models/m:predict",
            {"instances": [[5]]},
            {"x-test-delay-ms": "1000"},
        )
        outcome["status"], outcome["body"] = r.status, r.json()

    t = threading.Thread(target=slow_call)
    t.start()
    time.sleep(0.3)  # the request is in flight at the replica
    started = time.monotonic()
    gw.popen.send_signal(signal.SIGTERM)
    t.join(10)
    assert outcome == {"status": 200, "body": {"predictions": [[10]]}}
    assert gw.popen.wait(10) == 0
    # It waited for the request (~0.7 s left), not the whole 3 s grace.
    assert 0.4 < time.monotonic() - started < 3.0
    assert wait_until(lambda: not pid_alive(envoy_pid), 2)
    assert not (group.workdir / "gw.ports.json").exists()
    assert "stopped" in gw.log()


def test_killed_launcher_takes_envoy_with_it(group: ProcessGroup) -> None:
    r0 = group.backend("r0")
    gw = group.gateway("gw", [r0])
    envoy_pid = gw.ports["envoy_pid"]
    gw.popen.kill()  # no chance to clean up: PR_SET_PDEATHSIG must do it
    gw.popen.wait(5)
    assert wait_until(lambda: not pid_alive(envoy_pid), 5)


def test_envoy_death_ends_launcher_with_envoy_exit_code(group: ProcessGroup) -> None:
    r0 = group.backend("r0")
    gw = group.gateway("gw", [r0])
    os.kill(gw.ports["envoy_pid"], signal.SIGKILL)
    assert gw.popen.wait(10) == 128 + signal.SIGKILL
    assert "envoy_exited" in gw.log()


def test_bodies_larger_than_max_message_bytes_are_413_and_500(group: ProcessGroup) -> None:
    r0 = group.backend("r0")
    config = write_config(
        group.workdir / "limits.yaml",
        lambda d: listener_of(d, "ingress")["limits"].update(max_body_bytes=1 << 20),
    )
    gw = group.gateway("gw", [r0], xds=("--config", str(config)))

    def predict(n: int, padding: int = 0) -> HttpResponse:
        # Compact JSON in; the doubled answer comes back with ", " separators (larger).
        body = json.dumps({"instances": [list(range(n))]}, separators=(",", ":")).encode()
        return http(gw.ports["port"], "POST", "/v1/models/m:predict", body + b" " * padding, timeout=30)

    assert predict(100_000).status == 200  # ~0.59 MB in, ~0.74 MB out
    assert predict(150_000).status == 500  # ~0.94 MB in, ~1.14 MB out: Envoy's plain 500
    too_big = predict(1000, padding=1 << 20)
    assert too_big.status == 413
    assert "exceeds the configured limit" in too_big.json()["error"]  # TF Serving's REST error shape
    assert predict(1000).status == 200


def test_all_replicas_down_answers_503_quickly(group: ProcessGroup) -> None:
    r0 = group.backend("r0")
    gw = group.gateway("gw", [r0])
    r0.popen.kill()
    r0.popen.wait(5)
    started = time.monotonic()
    r = http(gw.ports["port"], "POST", "/v1/models/m:predict", {"instances": [[1]]})
    assert r.status == 503
    assert time.monotonic() - started < 3.0
    channel, stub = serving_stub(f"127.0.0.1:{gw.ports['port']}")
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.GetModelStatus(serving_pb2.GetModelStatusRequest(model_name="m"), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def run_gateway_cli(tmp_path: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "--work-dir", str(tmp_path / "gw"), *args],
        cwd=REPO,
        env={**os.environ, **child_env()},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_listener_port_in_use_fails_startup_with_envoy_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = run_gateway_cli(tmp_path, "--backends", "127.0.0.1:1", "--port", str(port))
    assert out.returncode == 1
    assert "Address already in use" in out.stderr
    assert "Envoy exited with code 1 before it was ready" in out.stderr


def test_bad_backends_flag_exits_2_naming_the_setting(tmp_path: Path) -> None:
    out = run_gateway_cli(tmp_path, "--backends", "127.0.0.1")
    assert out.returncode == 2
    assert "invalid setting backends (--backends / MLMESH_GATEWAY_BACKENDS)" in out.stderr
    assert not (tmp_path / "gw").exists()  # failed before touching anything


def test_missing_envoy_binary_exits_1(tmp_path: Path) -> None:
    out = run_gateway_cli(tmp_path, "--backends", "127.0.0.1:1", "--envoy-path", str(tmp_path / "nope"))
    assert out.returncode == 1
    assert "does not exist or is not executable" in out.stderr
