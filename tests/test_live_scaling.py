"""The local suite under steady prediction load through the gateway: a serving replica killed
with SIGKILL, replicas added and removed with `mlmesh scale`, and not one request fails.

One `mlmesh up` (Envoy configured by the control plane from the file registry) with 3 serving
replicas and a model exported before it starts. The load is bounded: a few client threads,
each sending gRPC Predict one after another at a fixed pace, on loopback only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from e2e_util import mlmesh, service_entry, stop, tail, wait_gone, wait_json, wait_restarted
from mlmesh import tensor
from mlmesh.channels import sync_channel
from mlmesh.serving.v1 import serving_pb2, serving_pb2_grpc

from serving_svc.tests.helpers import export_image_model, metric_value

pytestmark = pytest.mark.faults

MODEL = "fashion"
UP_TIMEOUT = 300
CLIENTS, PACE_S = 4, 0.02  # about 4 x 40 = 160 requests/s at most


class Load:
    """Client threads predicting through the gateway until stopped; every outcome is kept."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        x = np.random.default_rng(0).integers(0, 256, (1, 28, 28)).astype(np.float32)
        self._request = serving_pb2.PredictRequest(model_name=MODEL, inputs={"image": tensor.to_proto(x)})
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]

    def _run(self) -> None:
        with sync_channel(self.addr) as channel:
            stub = serving_pb2_grpc.ServingServiceStub(channel)
            while not self._stop.is_set():
                try:
                    stub.Predict(self._request, timeout=10)
                except grpc.RpcError as e:
                    with self._lock:
                        self.failures.append(f"{e.code().name}: {e.details()}")
                else:
                    with self._lock:
                        self.ok += 1
                self._stop.wait(PACE_S)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def predicts(suite_file: Path, name: str) -> float:
    entry = service_entry(json.loads(suite_file.read_text()), name)
    with urllib.request.urlopen(f"http://127.0.0.1:{entry['metrics_port']}/metrics", timeout=10) as r:
        text = r.read().decode()
    return metric_value(text, "mlmesh_grpc_requests_total", method="Predict", code="OK")


def scale(root: Path, count: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlmesh.cli.main", "scale", "serving", str(count), "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def wait_for(what: str, fn: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("scaling")
    root, log = tmp / "suite", tmp / "up.log"
    export_image_model(root / "models", MODEL, 1)
    proc = mlmesh(["up", "--root", str(root), "--shards", "1", "--replicas", "3", "--workers", "0"], log, tmp)
    try:
        yield root, wait_json(root / "run" / "suite.json", UP_TIMEOUT, proc, log)
    finally:
        stop(proc)
        leftovers = wait_gone(str(root), timeout=20)
        assert leftovers == [], leftovers
        assert "Traceback" not in log.read_text(), tail(log)


def test_a_killed_replica_fails_no_request_and_its_restart_takes_traffic(
    suite: tuple[Path, dict[str, Any]],
) -> None:
    root, info = suite
    suite_file = root / "run" / "suite.json"
    victim = service_entry(info, "serving-1")
    with Load(info["gateway_grpc"]) as load:
        time.sleep(2.0)
        os.kill(victim["pid"], signal.SIGKILL)
        back = wait_restarted(suite_file, "serving-1", victim["pid"])
        before = predicts(suite_file, "serving-1")
        wait_for(
            "the restarted replica takes traffic through Envoy",
            lambda: predicts(suite_file, "serving-1") > before,
            30,
        )
    assert back["addr"] == victim["addr"]
    assert load.failures == [], load.failures[:5]
    assert load.ok > 200


def test_scaling_up_takes_traffic_within_2s_and_down_fails_no_request(
    suite: tuple[Path, dict[str, Any]],
) -> None:
    root, info = suite
    suite_file = root / "run" / "suite.json"
    with Load(info["gateway_grpc"]) as load:
        time.sleep(1.0)
        done = scale(root, 4)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "serving: 4 running" in done.stdout
        # SERVING is when its port file was written; the first request through Envoy follows.
        serving_at = (root / "run" / "serving-3.json").stat().st_mtime
        wait_for("serving-3 to take a request", lambda: predicts(suite_file, "serving-3") > 0, 30)
        took = time.time() - serving_at
        assert took <= 2.0, f"serving-3 took its first request {took:.2f}s after SERVING"

        done = scale(root, 2)
        assert done.returncode == 0, done.stdout + done.stderr
        names = [s["name"] for s in json.loads(suite_file.read_text())["services"]]
        assert "serving-3" not in names and "serving-2" not in names
        time.sleep(2.0)
    assert load.failures == [], load.failures[:5]
    assert load.ok > 200
    assert (
        not (root / "registry" / "serving").exists()
        or len(list((root / "registry" / "serving").glob("*.json"))) == 2
    )
