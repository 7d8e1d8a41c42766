"""Drop-in TF Serving: Google's own client and the REST examples of TF Serving's documentation,
through the real gateway (Envoy) to two real serving replicas.

The models are exported to match the documentation: `half_plus_three` (y = 0.5x + 3, with
regress and classify signatures, version 123 as in the docs) and `sensor`, whose inputs
are the docs' row/columnar example ("tag", "signal", "sensor"). The replicas read a TF
Serving model-config file that labels half_plus_three's version 123 "stable".
REST examples: https://www.tensorflow.org/tfx/serving/api_rest
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import wrappers_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from gateway.tests.conftest import ProcessGroup, serving_hosts_healthy, wait_until
from gateway.tests.http_util import HttpResponse, http
from serving_svc.tests.tfs_models import export_half_plus_three, export_sensor_model

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 32
HALF = "/v1/models/half_plus_three"
REGRESS, CLASSIFY = "tensorflow/serving/regress", "tensorflow/serving/classify"
STATUS_123 = {
    "model_version_status": [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]
}
MODEL_CONFIG = """
model_config_list {
  config {
    name: "half_plus_three"
    base_path: "models/half_plus_three"
    model_platform: "tensorflow"
    version_labels { key: "stable" value: 123 }
  }
  config { name: "sensor" base_path: "models/sensor" model_platform: "tensorflow" }
}
"""


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The gateway's port, with two serving replicas behind it (one set per module)."""
    root = tmp_path_factory.mktemp("tfs")
    export_half_plus_three(root / "models", "half_plus_three", 123)
    export_sensor_model(root / "models", "sensor", 1)
    (root / "models.config").write_text(MODEL_CONFIG)
    group = ProcessGroup(root)
    try:
        replica_args = ["-m", "serving_svc", "--model-config-file", str(root / "models.config")]
        replica_args += ["--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1"]
        replica_args += ["--max-request-examples", str(MAX_EXAMPLES)]
        replicas = [group.spawn(f"serving{i}", replica_args, timeout=180) for i in range(2)]
        gateway = group.gateway("gw", replicas)

        def both_healthy() -> bool:
            clusters = http(gateway.ports["admin_port"], "GET", "/clusters").body.decode()
            # Both clusters (least request and keyed) hold the same two replicas.
            return serving_hosts_healthy(clusters) == 4

        assert wait_until(both_healthy, 30), "the replicas never passed Envoy's health checks"
        yield gateway.ports["port"]
    finally:
        group.close()


@pytest.fixture(scope="module")
def channel(port: int) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch


# -- Google's client, unchanged, through the gateway ---------------------------------------


def test_google_client_predicts_through_the_gateway(channel: grpc.Channel) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_three"
    request.model_spec.signature_name = "serving_default"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.0, 5.0], dtype=tf.float32))
    response = stub.Predict(request, 10.0)
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["y"]), [3.5, 4.0, 5.5])
    assert (response.model_spec.name, response.model_spec.version.value) == ("half_plus_three", 123)


def test_google_client_predicts_by_version_label(channel: grpc.Channel) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_three"
    request.model_spec.version_label = "stable"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([0.0], dtype=tf.float32))
    response = stub.Predict(request, 10.0)
    assert (list(response.outputs["y"].float_val), response.model_spec.version.value) == ([3.0], 123)


def test_google_client_reads_metadata_status_and_runs_regress_and_classify(channel: grpc.Channel) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    metadata = stub.GetModelMetadata(
        get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=model_pb2.ModelSpec(name="half_plus_three"), metadata_field=["signature_def"]
        ),
        10.0,
    )
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signature_defs)
    assert signature_defs.signature_def[REGRESS].method_name == REGRESS

    regress = regression_pb2.RegressionRequest(model_spec=model_pb2.ModelSpec(name="half_plus_three"))
    regress.model_spec.signature_name = REGRESS
    for x in (1.0, 2.0):
        regress.input.example_list.examples.add().features.feature["x"].float_list.value.append(x)
    assert [r.value for r in stub.Regress(regress, 10.0).result.regressions] == [3.5, 4.0]

    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "half_plus_three"
    classify.model_spec.signature_name = CLASSIFY
    classify.input.example_list.examples.add().features.feature["x"].float_list.value.append(1.0)
    [row] = stub.Classify(classify, 10.0).result.classifications
    assert [(c.label, c.score) for c in row.classes] == [("high", 3.5), ("low", -3.5)]

    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(
            model_spec=model_pb2.ModelSpec(name="half_plus_three", version=wrappers_pb2.Int64Value(value=123))
        ),
        10.0,
    )
    [version] = status.model_version_status
    assert (version.version, version.state) == (123, get_model_status_pb2.ModelVersionStatus.AVAILABLE)


def grpc_error(channel: grpc.Channel, request: predict_pb2.PredictRequest) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 10.0)
    return e.value.code(), str(e.value.details())


def half_request(inputs: dict[str, Any], **spec: Any) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(**{"name": "half_plus_three", **spec})
    )
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


@pytest.mark.parametrize(
    ("inputs", "spec", "code", "message"),
    [
        ({"x": np.ones(1, np.float32)}, {"name": "nope"}, "NOT_FOUND", "model 'nope'"),
        (
            {"x": np.ones(1, np.float32)},
            {"version": wrappers_pb2.Int64Value(value=9)},
            "NOT_FOUND",
            "version 9",
        ),
        ({"x": np.ones(1, np.float32)}, {"version_label": "canary"}, "NOT_FOUND", "'canary'"),
        ({"z": np.ones(1, np.float32)}, {}, "INVALID_ARGUMENT", "missing ['x'], unexpected ['z']"),
        (
            {"x": np.ones((1, 2), np.float32)},
            {},
            "INVALID_ARGUMENT",
            "input 'x' has shape [1,2] but the model expects [?]",
        ),
        (
            {"x": np.array([b"a"])},
            {},
            "INVALID_ARGUMENT",
            "input 'x' has dtype string but the model expects float32",
        ),
        (
            {"x": np.ones(1, np.float32)},
            {"signature_name": "nope"},
            "INVALID_ARGUMENT",
            'signature key "nope"',
        ),
        (
            {"x": np.ones(MAX_EXAMPLES + 1, np.float32)},
            {},
            "INVALID_ARGUMENT",
            f"batch size {MAX_EXAMPLES + 1} exceeds the limit of {MAX_EXAMPLES} examples per request",
        ),
    ],
    ids=["model", "version", "label", "input-name", "shape", "dtype", "signature", "batch-too-big"],
)
def test_google_client_bad_requests_get_precise_statuses(
    channel: grpc.Channel, inputs: dict[str, Any], spec: dict[str, Any], code: str, message: str
) -> None:
    got, details = grpc_error(channel, half_request(inputs, **spec))
    assert got == grpc.StatusCode[code], details
    assert message in details


# -- REST, the documentation's examples, through the gateway --------------------------------


def ok(r: HttpResponse) -> Any:
    assert r.status == 200, r.body[:500]
    assert r.headers["content-type"] == "application/json"
    return r.json()


@pytest.mark.parametrize("path", [HALF, f"{HALF}/versions/123", f"{HALF}/labels/stable"])
def test_rest_model_status_is_tf_servings_json(port: int, path: str) -> None:
    assert ok(http(port, "GET", path)) == STATUS_123


def test_rest_predict_example_from_the_docs(port: int) -> None:
    # curl -d '{"instances": [1.0,2.0,5.0]}' -X POST http://localhost:8501/v1/models/half_plus_three:predict
    assert ok(http(port, "POST", f"{HALF}:predict", {"instances": [1.0, 2.0, 5.0]})) == {
        "predictions": [3.5, 4.0, 5.5]
    }


def test_rest_regress_example_from_the_docs(port: int) -> None:
    body = {"signature_name": REGRESS, "examples": [{"x": 1.0}, {"x": 2.0}]}
    # The docs' sample output says "results"; their response format (and TF Serving) say "result".
    assert ok(http(port, "POST", f"{HALF}:regress", body)) == {"result": [3.5, 4.0]}


def test_rest_classify_answers_label_score_pairs(port: int) -> None:
    body = {"signature_name": CLASSIFY, "examples": [{"x": 1.0}, {"x": 2.0}]}
    assert ok(http(port, "POST", f"{HALF}:classify", body)) == {
        "result": [[["high", 3.5], ["low", -3.5]], [["high", 4.0], ["low", -4.0]]]
    }


def test_rest_predict_by_version_and_by_label(port: int) -> None:
    for path in (f"{HALF}/versions/123:predict", f"{HALF}/labels/stable:predict"):
        assert ok(http(port, "POST", path, {"instances": [0.0]})) == {"predictions": [3.0]}


def test_rest_row_format_example_from_the_docs(port: int) -> None:
    # The docs' example, with its stray "]" after the second signal removed (it is not valid JSON).
    body = {
        "instances": [
            {"tag": "foo", "signal": [1, 2, 3, 4, 5], "sensor": [[1, 2], [3, 4]]},
            {"tag": "bar", "signal": [3, 4, 1, 2, 5], "sensor": [[4, 5], [6, 8]]},
        ]
    }
    assert ok(http(port, "POST", "/v1/models/sensor:predict", body)) == {
        "predictions": [{"tag_length": 3, "total": 25.0}, {"tag_length": 3, "total": 38.0}]
    }


def test_rest_columnar_format_example_from_the_docs(port: int) -> None:
    body = {
        "inputs": {
            "tag": ["foo", "bar"],
            "signal": [[1, 2, 3, 4, 5], [3, 4, 1, 2, 5]],
            "sensor": [[[1, 2], [3, 4]], [[4, 5], [6, 8]]],
        }
    }
    assert ok(http(port, "POST", "/v1/models/sensor:predict", body)) == {
        "outputs": {"tag_length": [3, 3], "total": [25.0, 38.0]}
    }


def test_rest_signature_name_selects_the_signature(port: int) -> None:
    body = {"signature_name": "peak", "instances": [[1, 9, 3, 4, 5]]}
    assert ok(http(port, "POST", "/v1/models/sensor:predict", body)) == {"predictions": [9.0]}


def test_rest_binary_values_come_as_b64_objects(port: int) -> None:
    body = {
        "instances": [
            {
                "tag": {"b64": base64.b64encode(b"\x00\xffab").decode()},
                "signal": [0] * 5,
                "sensor": [[0, 0], [0, 0]],
            }
        ]
    }
    assert ok(http(port, "POST", "/v1/models/sensor:predict", body))["predictions"][0]["tag_length"] == 4


def test_rest_metadata_is_tf_servings_json(port: int) -> None:
    body = ok(http(port, "GET", f"{HALF}/metadata"))
    assert body["model_spec"] == {"name": "half_plus_three", "signature_name": "", "version": "123"}
    signature_defs = body["metadata"]["signature_def"]["signature_def"]
    assert sorted(signature_defs) == ["serving_default", CLASSIFY, REGRESS]
    x = signature_defs["serving_default"]["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT"
    assert x["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False}
    assert signature_defs[REGRESS]["method_name"] == REGRESS
    assert ok(http(port, "GET", f"{HALF}/labels/stable/metadata"))["model_spec"]["version"] == "123"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", "/v1/models/nope", None, 404, "model 'nope'"),
        ("GET", f"{HALF}/versions/9", None, 404, "no version 9"),
        ("GET", f"{HALF}/labels/canary", None, 404, "no version label 'canary'"),
        ("POST", "/v1/models/nope:predict", {"instances": [1.0]}, 404, "model 'nope'"),
        ("POST", f"{HALF}/versions/9:predict", {"instances": [1.0]}, 404, "version 9"),
        ("POST", f"{HALF}/labels/canary:predict", {"instances": [1.0]}, 404, "'canary'"),
        ("POST", f"{HALF}:predict", {"instances": [{"z": 1.0}]}, 400, "missing ['x'], unexpected ['z']"),
        ("POST", f"{HALF}:predict", {"instances": [[1.0, 2.0]]}, 400, "the model expects [] per example"),
        ("POST", f"{HALF}:predict", {"instances": ["a"]}, 400, "holds string; the model expects float32[?]"),
        (
            "POST",
            f"{HALF}:predict",
            {"signature_name": "nope", "instances": [1.0]},
            400,
            'signature key "nope"',
        ),
        ("POST", f"{HALF}:predict", {"instances": [1.0] * (MAX_EXAMPLES + 1)}, 400, "exceeds the limit"),
        ("POST", f"{HALF}:predict", {"instances": [1.0], "inputs": [1.0]}, 400, "both were set"),
        ("POST", f"{HALF}:regress", {"examples": [{"x": 1.0}]}, 400, "expected 'tensorflow/serving/regress'"),
        # The predict body reaches the replica raw: it parses and names what is wrong.
        ("POST", f"{HALF}:predict", b'{"instances": [1.0,', 400, "request body is not valid JSON"),
        ("POST", f"{HALF}:predict", b"[1.0]", 400, "request body is a JSON list; expected an object"),
        ("POST", f"{HALF}:predict", {"instance": [1.0]}, 400, "unknown fields ['instance']"),
        ("POST", f"{HALF}:predict", {"instances": 1.0}, 400, "'instances' is a JSON number; expected a list"),
    ],
    ids=[
        "status-model",
        "status-version",
        "status-label",
        "model",
        "version",
        "label",
        "input-name",
        "shape",
        "dtype",
        "signature",
        "batch-too-big",
        "row-and-columnar",
        "regress-on-predict-signature",
        "malformed-json",
        "body-not-an-object",
        "unknown-field",
        "instances-not-a-list",
    ],
)
def test_rest_bad_requests_get_precise_statuses(
    port: int, method: str, path: str, body: bytes | dict[str, Any] | None, status: int, message: str
) -> None:
    r = http(port, method, path, body)
    assert r.status == status, r.body[:500]
    assert message in r.json()["error"]


def test_rest_integers_stay_int64_features_as_in_tf_serving(port: int) -> None:
    # The body reaches the replica as sent, so `1` is an int64 feature and `1.0` a float one (TF
    # Serving's rule). half_plus_three parses x as float32: the int64 feature is refused, naming x.
    r = http(port, "POST", f"{HALF}:regress", {"signature_name": REGRESS, "examples": [{"x": 1}]})
    assert r.status == 400, r.body[:300]
    assert "Key: x" in r.json()["error"] and "int64 but expected type: float" in r.json()["error"]
    as_float = {"signature_name": REGRESS, "examples": [{"x": 1.0}]}
    assert ok(http(port, "POST", f"{HALF}:regress", as_float)) == {"result": [3.5]}
