"""`python -m serving_svc --model-config-file`: several models, labels, health per model,
the file watched for changes, a bad file at start and while running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mlmesh import tensor
from mlmesh.cli.suite import child_env
from mlmesh.serving.v1 import serving_pb2, serving_pb2_grpc

from serving_svc.tests.conftest import Exports
from serving_svc.tests.helpers import ROOT, ServerProcess, copy_version, serving_process, wait_for

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def config_text(*models: str) -> str:
    blocks = {
        "fashion": 'config { name: "fashion" base_path: "store/fashion" model_version_policy { all {} } '
        'version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 } }',
        "second": 'config { name: "second" base_path: "store/second" }',
    }
    return "model_config_list { " + " ".join(blocks[m] for m in models) + " }"


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class Served:
    process: ServerProcess
    work: Path
    config: Path
    stub: serving_pb2_grpc.ServingServiceStub
    health: health_pb2_grpc.HealthStub

    def status(self, service: str) -> int:
        return self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status

    def version(self, model: str) -> int:
        """The version answering `model`, 0 while it is NOT_FOUND."""
        x = tensor.to_proto(np.zeros((1, 28, 28), np.float32))
        request = serving_pb2.PredictRequest(model_name=model, inputs={"image": x})
        try:
            return int(self.stub.Predict(request, timeout=10).version)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return 0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, exports: Exports) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("model-config")
    copy_version(exports.image_v1, work / "store", "fashion", 1)
    copy_version(exports.image_v2, work / "store", "fashion", 2)
    copy_version(exports.image_v1, work / "store", "second", 1)
    config = work / "models.config"
    write_atomically(config, config_text("fashion"))
    args = ["--model-config-file", str(config), "--model-config-poll-seconds", "0.1", "--poll-seconds", "0.2"]
    with serving_process(work, *args, "--drain-seconds", "1") as process:
        channel = grpc.insecure_channel(process.addr)
        try:
            yield Served(
                process,
                work,
                config,
                serving_pb2_grpc.ServingServiceStub(channel),
                health_pb2_grpc.HealthStub(channel),
            )
        finally:
            channel.close()


def test_models_of_the_file_serve_every_aspired_version_and_report_health_each(served: Served) -> None:
    assert served.version("fashion") == 2
    status = served.stub.GetModelStatus(serving_pb2.GetModelStatusRequest(model_name="fashion"), timeout=10)
    assert {v.version: v.state for v in status.versions} == {
        2: serving_pb2.MODEL_VERSION_STATE_AVAILABLE,
        1: serving_pb2.MODEL_VERSION_STATE_AVAILABLE,
    }
    assert (served.status(""), served.status("fashion")) == (SERVING, SERVING)
    with pytest.raises(grpc.RpcError) as e:
        served.status("second")  # not configured (yet): unknown to health
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_changed_file_adds_and_removes_models_and_a_bad_one_is_logged_and_ignored(served: Served) -> None:
    write_atomically(served.config, config_text("second"))
    wait_for(lambda: served.version("second") == 1, what="second to be served")
    wait_for(lambda: served.status("second") == SERVING, what="second to be SERVING")
    wait_for(lambda: served.status("fashion") == NOT_SERVING, what="fashion to be NOT_SERVING once removed")
    assert served.version("fashion") == 0  # NOT_FOUND

    write_atomically(
        served.config,
        config_text("second").replace('"store/second" }', '"store/second" model_platform: "x" }'),
    )
    wait_for(lambda: "model config file rejected" in served.process.log(), what="the bad file to be logged")
    assert "model_platform 'x' is not supported" in served.process.log()
    assert served.version("second") == 1 and served.status("second") == SERVING


def test_reload_config_request_from_google_client_swaps_models_and_rewrites_the_file(served: Served) -> None:
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
    from tensorflow_serving.config import model_server_config_pb2

    def reload(text: str) -> model_management_pb2.ReloadConfigResponse:
        config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
        request = model_management_pb2.ReloadConfigRequest(config=config)
        with grpc.insecure_channel(served.process.addr) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            return stub.HandleReloadConfigRequest(request, timeout=60)

    # Answered once the new models are loaded: fashion serves at once, second is gone.
    answer = reload(config_text("fashion"))
    assert (answer.status.error_code, answer.status.error_message) == (0, "")
    assert served.version("fashion") == 2 and served.status("fashion") == SERVING
    wait_for(lambda: served.version("second") == 0, what="second to be unloaded")
    # Written over the watched file (so it outlives a restart, and every replica watching follows).
    assert 'name: "fashion"' in served.config.read_text()

    # A config that does not validate changes nothing.
    with pytest.raises(grpc.RpcError) as e:
        reload(config_text("second").replace('"store/second" }', '"store/second" model_platform: "x" }'))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    expected = "ReloadConfigRequest.config: model 'second': model_platform 'x' is not supported"
    assert expected in e.value.details()
    assert 'name: "fashion"' in served.config.read_text() and served.version("fashion") == 2

    # A model with nothing to serve: the config is taken, the answer's status says why.
    answer = reload(config_text("fashion", "second").replace("store/second", "store/empty"))
    assert answer.status.error_code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "model 'second' has no AVAILABLE version" in answer.status.error_message

    assert reload(config_text("second")).status.error_code == 0
    assert served.version("second") == 1 and served.status("second") == SERVING


def test_sigterm_turns_every_model_not_serving_while_draining(served: Served) -> None:
    assert served.status("second") == SERVING
    served.process.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: served.status("second") == NOT_SERVING, timeout=5, what="NOT_SERVING while draining")
    assert served.status("") == NOT_SERVING
    assert served.process.proc.wait(30) == 0


def test_bad_model_config_file_at_start_exits_2_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "m" base_path: "m" model_platform: "onnx" } }')
    result = subprocess.run(
        [sys.executable, "-m", "serving_svc", "--model-config-file", str(config)],
        cwd=ROOT,
        env={**os.environ, **child_env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "invalid setting model_config_file (--model-config-file / MLMESH_SERVING_MODEL_CONFIG_FILE): " in (
        result.stderr
    )
    assert "model 'm': model_platform 'onnx' is not supported" in result.stderr
