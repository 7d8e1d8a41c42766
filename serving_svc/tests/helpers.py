"""Test helpers: tiny exported models, an event loop in a thread, a server process.

Models follow the trainer's export contract: `<repo>/<model>/<version>/`,
written to a hidden `.tmp-*` directory and renamed into place, signature
"serving_default" with named inputs and a dict of outputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import keras
import numpy as np
import tensorflow as tf
from mlmesh.cli.suite import child_env
from mlmesh.server import server_options
from mlmesh.serving.v1 import serving_pb2_grpc

from serving_svc import tfs_servicer
from serving_svc.config import ServingSettings
from serving_svc.server import build

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


class ImageModel(tf.Module):
    """Flatten → Dense(10, softmax) on raw pixels scaled inside the model, like fashion_cnn."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((28, 28), name="image")
        hidden = keras.layers.Flatten()(inputs)
        outputs = keras.layers.Dense(10, activation="softmax")(hidden)
        self.model = keras.Model(inputs, outputs)

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.float32, name="image")])
    def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": self.model(image / 255.0)}

    def predict(self, image: np.ndarray) -> np.ndarray:
        """The direct (eager Keras) call serving must agree with."""
        return np.asarray(self.model(tf.constant(image, tf.float32) / 255.0))


class MultiInputModel(tf.Module):
    """Two inputs of different dtypes and a variable-length one, to exercise the checks."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = tf.Variable(2.0)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 3], tf.float32, name="a"),
            tf.TensorSpec([None], tf.int64, name="b"),
        ]
    )
    def serve(self, a: tf.Tensor, b: tf.Tensor) -> dict[str, tf.Tensor]:
        total = tf.reduce_sum(a, axis=1) + tf.cast(b, tf.float32)
        return {"scaled": a * self.scale, "total": total}


def export(module: tf.Module, repo: Path, name: str, version: int | str) -> Path:
    """Export atomically: a hidden temp dir renamed to `<repo>/<name>/<version>`."""
    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=model_dir))
    tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
    final = model_dir / str(version)
    os.rename(tmp, final)
    return final


def export_image_model(repo: Path, name: str, version: int, seed: int = 1) -> ImageModel:
    module = ImageModel(seed)
    export(module, repo, name, version)
    return module


def copy_version(src: Path, repo: Path, name: str, version: int | str) -> Path:
    """Reuse an exported SavedModel (saving takes ~0.4 s; copying is instant)."""
    (repo / name).mkdir(parents=True, exist_ok=True)
    dst = repo / name / str(version)
    tmp = repo / name / f".tmp-copy-{version}"
    shutil.copytree(src, tmp)
    os.rename(tmp, dst)
    return dst


def wait_for(predicate: Callable[[], T], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> T:
    """Poll until predicate returns something truthy; fail naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class LoopThread:
    """An asyncio event loop in a daemon thread, so sync tests can drive async code
    (pytest-asyncio is not installed)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run a plain function on the loop (the manager is single-loop, not thread-safe)."""

        async def wrapper() -> T:
            return fn()

        return self.run(wrapper(), timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    port_file: Path
    log_path: Path

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 if none)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


@contextlib.contextmanager
def serving_process(workdir: Path, *args: str, startup_timeout: float = 90.0) -> Iterator[ServerProcess]:
    """Start `python -m serving_svc` on loopback; always killed on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / "serving.json"
    log_path = workdir / "serving.log"
    env = {**os.environ, **child_env(), "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "serving_svc", "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--port-file", str(port_file), "--log-format", "json", *args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + startup_timeout
        while not port_file.exists():
            if proc.poll() is not None:
                raise AssertionError(f"serving_svc exited with {proc.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"serving_svc not ready after {startup_timeout}s:\n{log_path.read_text()}"
                )
            time.sleep(0.05)
        info: dict[str, Any] = json.loads(port_file.read_text())
        yield ServerProcess(proc, info["port"], info["metrics_port"], port_file, log_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@dataclass
class InProcessServer:
    """A ServingServicer behind a real grpc.aio server on an ephemeral loopback port."""

    loop: LoopThread
    manager: Any
    port: int
    channel: grpc.Channel

    @property
    def stub(self) -> serving_pb2_grpc.ServingServiceStub:
        return serving_pb2_grpc.ServingServiceStub(self.channel)


@contextlib.contextmanager
def in_process_server(settings: ServingSettings) -> Iterator[InProcessServer]:
    """Run manager + servicer on a background event loop; sync tests call it over a real channel."""
    loop = LoopThread()
    manager, servicer = build(settings)
    servers: list[grpc.aio.Server] = []

    async def start() -> int:
        server = grpc.aio.server(options=server_options(settings))  # binds to the running loop
        servers.append(server)
        serving_pb2_grpc.add_ServingServiceServicer_to_server(servicer, server)
        tfs_servicer.add_to_server(manager, server, max_request_examples=settings.max_request_examples)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await manager.start()
        return port

    channel: grpc.Channel | None = None
    try:
        port = loop.run(start())
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        yield InProcessServer(loop, manager, port, channel)
    finally:
        if channel is not None:
            channel.close()
        for server in servers:
            loop.run(server.stop(0))
        loop.run(manager.stop())
        loop.close()
