"""Fixtures: shards served in-process over real gRPC, and shards as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from mlmesh import tensor
from mlmesh.channels import sync_channel
from mlmesh.paramserver.v1 import paramserver_pb2 as pb
from mlmesh.paramserver.v1 import paramserver_pb2_grpc

from paramserver_svc.core.shard import Shard
from paramserver_svc.servicer import ParameterServerServicer, add_to_server

REPO = Path(__file__).resolve().parents[2]


def child_env() -> dict[str, str]:
    """The environment of a child process: this checkout's services and `mlmesh` first (the
    venv's editable install may point at another checkout), then the caller's PYTHONPATH."""
    paths = [str(REPO), str(REPO / "common"), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(p for p in paths if p))}


class ThreadServer:
    """A grpc.aio server for one shard, on its own event loop in a background thread."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.executor = ThreadPoolExecutor(max_workers=4)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def _start(self) -> int:
        self.server = grpc.aio.server()
        add_to_server(ParameterServerServicer(self.shard, self.executor), self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return port

    def start(self) -> ThreadServer:
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.executor.shutdown(wait=True)


@dataclass
class ShardClient:
    shard: Shard
    stub: paramserver_pb2_grpc.ParameterServerServiceStub


@pytest.fixture
def make_shards(tmp_path: Path) -> Iterator:
    """make_shards(n) -> [ShardClient] for shards 0..n-1 of n, each behind a real gRPC server."""
    servers: list[ThreadServer] = []
    channels: list[grpc.Channel] = []

    def make(n: int = 1) -> list[ShardClient]:
        out = []
        for i in range(n):
            shard = Shard(i, n, tmp_path / f"ckpt-{len(servers)}")
            srv = ThreadServer(shard).start()
            servers.append(srv)
            ch = sync_channel(f"127.0.0.1:{srv.port}")
            channels.append(ch)
            out.append(ShardClient(shard, paramserver_pb2_grpc.ParameterServerServiceStub(ch)))
        return out

    try:
        yield make
    finally:
        for ch in channels:
            ch.close()
        for srv in servers:
            srv.stop()


@pytest.fixture
def client(make_shards) -> ShardClient:
    return make_shards(1)[0]


def var(
    name: str,
    shape: list[int],
    *,
    dtype: int = tensor.DType.DTYPE_FLOAT32,
    row_sharded: bool = False,
    kind: str = "zeros",
    scale: float = 0.0,
    seed: int = 0,
    value: np.ndarray | None = None,
) -> pb.VariableSpec:
    init = pb.Initializer(kind=kind, scale=scale, seed=seed)
    if value is not None:
        init.value.CopyFrom(tensor.to_proto(value))
    return pb.VariableSpec(name=name, dtype=dtype, shape=shape, row_sharded=row_sharded, initializer=init)


def sgd(lr: float = 0.5) -> pb.OptimizerSpec:
    return pb.OptimizerSpec(kind="sgd", learning_rate=lr)


def rows_slice(name: str, rows: list[int], values: np.ndarray | None = None) -> pb.RowSlice:
    rs = pb.RowSlice(name=name, rows=rows)
    if values is not None:
        rs.values.CopyFrom(tensor.to_proto(values))
    return rs


def expect_status(code: grpc.StatusCode, fn, request, *needles: str) -> str:
    """Call and assert the exact status code and that the message names each needle."""
    with pytest.raises(grpc.RpcError) as info:
        fn(request, timeout=10)
    err = info.value
    assert err.code() == code, f"expected {code}, got {err.code()}: {err.details()}"
    for needle in needles:
        assert needle in err.details(), f"{needle!r} not in {err.details()!r}"
    return err.details()


# -- real processes ---------------------------------------------------------------------


@dataclass
class ShardProcess:
    proc: subprocess.Popen
    port: int
    metrics_port: int
    log_path: Path

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_shard_process(
    workdir: Path, index: int, num_shards: int, checkpoint_dir: Path, *extra: str, timeout: float = 30.0
) -> ShardProcess:
    """Start `python -m paramserver_svc` and wait for its port file (written once SERVING)."""
    port_file = workdir / f"shard-{index}-{time.monotonic_ns()}.json"
    log_path = port_file.with_suffix(".log")
    env = child_env()
    cmd = [
        sys.executable, "-m", "paramserver_svc",
        "--port", "0", "--port-file", str(port_file),
        "--shard-index", str(index), "--num-shards", str(num_shards),
        "--checkpoint-dir", str(checkpoint_dir),
        "--drain-seconds", "0", "--grace-seconds", "2", "--log-format", "json",
        *extra,
    ]  # fmt: skip
    log = open(log_path, "wb")  # noqa: SIM115 (the child owns it for its lifetime)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.exists():
            ports = json.loads(port_file.read_text())
            return ShardProcess(proc, ports["port"], ports["metrics_port"], log_path)
        if proc.poll() is not None:
            raise AssertionError(f"shard exited with {proc.returncode}: {log_path.read_text()}")
        time.sleep(0.05)
    proc.kill()
    proc.wait(10)
    raise AssertionError(f"shard did not serve within {timeout}s: {log_path.read_text()}")


def stop_process(sp: ShardProcess, sig: int = signal.SIGKILL, timeout: float = 15.0) -> int:
    if sp.proc.poll() is None:
        sp.proc.send_signal(sig)
        try:
            sp.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            sp.proc.kill()
            sp.proc.wait(10)
    return sp.proc.returncode


@pytest.fixture
def shard_processes(tmp_path: Path) -> Iterator:
    """spawn(index, n, checkpoint_dir, *flags) -> ShardProcess; every process is killed in teardown."""
    started: list[ShardProcess] = []

    def spawn(index: int, num_shards: int, checkpoint_dir: Path, *extra: str) -> ShardProcess:
        sp = start_shard_process(tmp_path, index, num_shards, checkpoint_dir, *extra)
        started.append(sp)
        return sp

    try:
        yield spawn
    finally:
        for sp in started:
            stop_process(sp)
