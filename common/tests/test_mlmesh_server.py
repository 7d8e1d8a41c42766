"""run_service's lifecycle, on a real process (the tiny service) over real gRPC."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from mlmesh.clients import check_health
from mlmesh_testutil import free_port, popen, wait_for_file

pytestmark = pytest.mark.unit


def _start(
    tmp_path: Path, spawn: list[subprocess.Popen[bytes]], *extra: str, port: int = 0
) -> tuple[subprocess.Popen[bytes], Path]:
    port_file = tmp_path / "tiny.json"
    args = ["-m", "mlmesh_tinysvc", "--port", str(port), "--port-file", str(port_file), *extra]
    proc = popen(args, tmp_path / "tiny.log")
    spawn.append(proc)
    return proc, port_file


def test_port_file_is_written_once_serving(tmp_path: Path, spawn: list[subprocess.Popen[bytes]]) -> None:
    proc, port_file = _start(tmp_path, spawn)
    wait_for_file(port_file)
    ports = json.loads(port_file.read_text())
    assert set(ports) == {"port", "metrics_port", "pid"}
    assert ports["pid"] == proc.pid
    addr = f"127.0.0.1:{ports['port']}"
    assert check_health(addr, "") == "SERVING"
    assert check_health(addr, "no.such.Service") == "NOT_FOUND"
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics_port']}/metrics", timeout=5) as resp:
        body = resp.read().decode()
    # The health checks above went through the metrics interceptor.
    assert 'mlmesh_grpc_requests_total{code="OK",method="Check",service="grpc.health.v1.Health"}' in body


def test_not_serving_until_on_start_finishes(tmp_path: Path, spawn: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    _, port_file = _start(tmp_path, spawn, "--start-delay", "2", port=port)
    addr = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    status = check_health(addr, "", timeout=1)
    while status == "UNREACHABLE" and time.monotonic() < deadline:
        time.sleep(0.05)
        status = check_health(addr, "", timeout=1)
    assert status == "NOT_SERVING"
    assert not port_file.exists()
    wait_for_file(port_file)
    assert check_health(addr, "") == "SERVING"


def test_sigterm_drains_not_serving_then_stops_and_removes_port_file(
    tmp_path: Path, spawn: list[subprocess.Popen[bytes]]
) -> None:
    stop_log = tmp_path / "stopped.txt"
    proc, port_file = _start(tmp_path, spawn, "--drain-seconds", "1.5", "--stop-log", str(stop_log))
    wait_for_file(port_file)
    addr = f"127.0.0.1:{json.loads(port_file.read_text())['port']}"
    os.kill(proc.pid, signal.SIGTERM)
    time.sleep(0.4)
    assert check_health(addr, "", timeout=1) == "NOT_SERVING"
    assert proc.wait(timeout=15) == 0
    assert not port_file.exists()
    assert stop_log.read_text().split() == ["tiny", str(proc.pid)]
    assert check_health(addr, "", timeout=1) == "UNREACHABLE"


def test_taken_port_fails_fast(tmp_path: Path, spawn: list[subprocess.Popen[bytes]]) -> None:
    first, port_file = _start(tmp_path, spawn)
    wait_for_file(port_file)
    port = json.loads(port_file.read_text())["port"]
    second = popen(
        ["-m", "mlmesh_tinysvc", "--port", str(port), "--metrics-port", "-1"], tmp_path / "second.log"
    )
    spawn.append(second)
    assert second.wait(timeout=15) != 0
    assert first.poll() is None


def test_interceptors_wrap_each_method_once_and_still_see_every_call() -> None:
    """gRPC asks interceptors for the handler on every call; WrappingInterceptor wraps a
    method's handler once (a registered handler is the same object each time), chained
    behind the metrics interceptor, and the wrapped handler still runs for each call."""
    import asyncio

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_health.v1._async import HealthServicer
    from mlmesh.server import MetricsInterceptor, WrappingInterceptor

    class Counting(WrappingInterceptor):
        def __init__(self) -> None:
            super().__init__()
            self.wraps = 0
            self.calls = 0

        def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
            self.wraps += 1
            inner = handler.unary_unary

            async def unary(request: object, context: grpc.aio.ServicerContext) -> object:
                self.calls += 1
                return await inner(request, context)

            return handler._replace(unary_unary=unary)

    async def scenario() -> tuple[int, int, list[int]]:
        counting = Counting()
        server = grpc.aio.server(interceptors=[MetricsInterceptor(), counting])
        health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                answers = [await stub.Check(health_pb2.HealthCheckRequest(), timeout=5) for _ in range(5)]
        finally:
            await server.stop(None)
        return counting.wraps, counting.calls, [a.status for a in answers]

    wraps, calls, statuses = asyncio.run(scenario())
    assert (wraps, calls) == (1, 5)
    assert statuses == [health_pb2.HealthCheckResponse.SERVING] * 5
