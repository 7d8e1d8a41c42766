"""Faults across processes: bad settings, a corrupt export, SIGTERM with requests in flight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mlmesh import tensor
from mlmesh.cli.suite import child_env
from mlmesh.serving.v1 import serving_pb2, serving_pb2_grpc

from serving_svc.tests.conftest import Exports
from serving_svc.tests.helpers import ROOT, copy_version, metric_value, serving_process, wait_for

pytestmark = pytest.mark.faults


def request(model: str) -> serving_pb2.PredictRequest:
    x = np.zeros((1, 28, 28), np.uint8)
    return serving_pb2.PredictRequest(model_name=model, inputs={"image": tensor.to_proto(x)})


def test_bad_setting_exits_2_naming_flag_and_env(tmp_path: Path) -> None:
    env = {**os.environ, **child_env(), "MLMESH_SERVING_MAX_QUEUE": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "serving_svc", "--model-repo", str(tmp_path), "--model-names", "a,../b"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "invalid setting max_queue (--max-queue / MLMESH_SERVING_MAX_QUEUE)" in result.stderr
    assert "invalid setting model_names (--model-names / MLMESH_SERVING_MODEL_NAMES)" in result.stderr
    assert "model name '../b' must be a plain directory name" in result.stderr


def test_corrupt_new_version_fails_while_the_old_one_keeps_serving(tmp_path: Path, exports: Exports) -> None:
    repo = tmp_path / "repo"
    copy_version(exports.image_v1, repo, "fashion", 1)
    with serving_process(tmp_path, "--model-repo", str(repo), "--poll-seconds", "0.2") as process:
        with grpc.insecure_channel(process.addr) as channel:
            stub = serving_pb2_grpc.ServingServiceStub(channel)
            assert stub.Predict(request("fashion"), timeout=10).version == 1  # loaded before SERVING
            broken = repo / "fashion" / "2"
            (broken / "variables").mkdir(parents=True)
            (broken / "saved_model.pb").write_bytes(b"\x08\x01garbage")

            def failed() -> serving_pb2.ModelVersionStatus | None:
                status = stub.GetModelStatus(
                    serving_pb2.GetModelStatusRequest(model_name="fashion"), timeout=10
                )
                by_version = {v.version: v for v in status.versions}
                v2 = by_version.get(2)
                return v2 if v2 is not None and v2.state == serving_pb2.MODEL_VERSION_STATE_FAILED else None

            v2 = wait_for(failed, what="version 2 to fail")
            assert "cannot load SavedModel" in v2.error
            assert stub.Predict(request("fashion"), timeout=10).version == 1
        assert process.proc.poll() is None


def test_sigterm_drains_in_flight_requests_and_exits_cleanly(tmp_path: Path, exports: Exports) -> None:
    repo = tmp_path / "repo"
    copy_version(exports.image_v1, repo, "fashion", 1)
    # A long batch wait keeps the requests queued when SIGTERM arrives.
    args = ["--model-repo", str(repo), "--max-batch-wait-ms", "1500", "--drain-seconds", "1"]
    with serving_process(tmp_path, *args) as process:
        assert json.loads(process.port_file.read_text())["pid"] == process.proc.pid
        with grpc.insecure_channel(process.addr) as channel:
            stub = serving_pb2_grpc.ServingServiceStub(channel)
            in_flight = [stub.Predict.future(request("fashion"), timeout=30) for _ in range(4)]
            wait_for(
                lambda: metric_value(process.metrics(), "mlmesh_serving_queue_depth", model="fashion") == 4,
                timeout=1.2,
                what="all four requests to be queued",
            )
            process.proc.send_signal(signal.SIGTERM)
            health = health_pb2_grpc.HealthStub(channel)
            wait_for(
                lambda: (
                    health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                    == health_pb2.HealthCheckResponse.NOT_SERVING
                ),
                timeout=5,
                what="NOT_SERVING during the drain",
            )
            assert [f.result(timeout=30).version for f in in_flight] == [1, 1, 1, 1]
        assert process.proc.wait(30) == 0
        assert not process.port_file.exists()
        assert "version unloaded" in process.log()
