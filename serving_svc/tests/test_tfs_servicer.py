"""tensorflow.serving.PredictionService and ModelService in process, called with Google's own stubs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
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

from serving_svc.config import ServingSettings
from serving_svc.tests.conftest import Exports
from serving_svc.tests.helpers import InProcessServer, copy_version, in_process_server
from serving_svc.tests.tfs_models import export_half_plus_three, export_sensor_model

pytestmark = pytest.mark.unit

MAX_EXAMPLES = 16
REGRESS, CLASSIFY = "tensorflow/serving/regress", "tensorflow/serving/classify"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, exports: Exports) -> Iterator[InProcessServer]:
    repo = tmp_path_factory.mktemp("repo")
    export_half_plus_three(repo, "half", 123)
    export_sensor_model(repo, "sensor", 1)
    copy_version(exports.image_v1, repo, "image", 1)
    settings = ServingSettings(model_repo=repo, poll_seconds=0.2, max_request_examples=MAX_EXAMPLES)
    with in_process_server(settings) as server:
        yield server


@pytest.fixture(scope="module")
def predictions(served: InProcessServer) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(served.channel)


@pytest.fixture(scope="module")
def models(served: InProcessServer) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(served.channel)


def spec(name: str, **fields: Any) -> model_pb2.ModelSpec:
    return model_pb2.ModelSpec(name=name, **fields)


def predict_request(model: str, inputs: dict[str, Any], **spec_fields: Any) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(model_spec=spec(model, **spec_fields))
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(
            value if isinstance(value, tensor_pb2.TensorProto) else tf.make_tensor_proto(value)
        )
    return request


def error(call: Any, request: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        call(request, timeout=30)
    return e.value.code(), str(e.value.details())


def regress_request(xs: list[float], **spec_fields: Any) -> regression_pb2.RegressionRequest:
    request = regression_pb2.RegressionRequest(model_spec=spec("half", **spec_fields))
    for x in xs:
        request.input.example_list.examples.add().features.feature["x"].float_list.value.append(x)
    return request


# -- Predict ---------------------------------------------------------------------


def test_predict_answers_with_the_version_served_and_typed_values(predictions: Any) -> None:
    response = predictions.Predict(
        predict_request("half", {"x": np.array([1.0, 2.0, 5.0], np.float32)}), timeout=30
    )
    assert response.model_spec.name == "half"
    assert response.model_spec.version.value == 123
    assert response.model_spec.signature_name == "serving_default"
    assert list(response.outputs["y"].float_val) == [3.5, 4.0, 5.5]  # how many TF Serving clients read it
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["y"]), [3.5, 4.0, 5.5])


def test_predict_accepts_typed_value_fields_and_a_value_that_fills_the_shape(predictions: Any) -> None:
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=2)])
    typed = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape, float_val=[2.0, 4.0])
    filled = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape, float_val=[2.0])
    assert list(
        predictions.Predict(predict_request("half", {"x": typed}), timeout=30).outputs["y"].float_val
    ) == [4.0, 5.0]
    assert list(
        predictions.Predict(predict_request("half", {"x": filled}), timeout=30).outputs["y"].float_val
    ) == [4.0, 4.0]


def test_predict_with_string_and_numeric_inputs_and_an_output_filter(predictions: Any) -> None:
    request = predict_request(
        "sensor",
        {
            "tag": np.array([b"foo", b"barbaz"]),
            "signal": np.array([[1, 2, 3, 4, 5], [3, 4, 1, 2, 5]], np.float32),
            "sensor": np.array([[[1, 2], [3, 4]], [[4, 5], [6, 8]]], np.float32),
        },
    )
    request.output_filter.append("tag_length")
    response = predictions.Predict(request, timeout=30)
    assert sorted(response.outputs) == ["tag_length"]
    assert list(response.outputs["tag_length"].int_val) == [3, 6]


def test_predict_on_a_named_signature(predictions: Any) -> None:
    request = predict_request(
        "sensor", {"signal": np.array([[1, 9, 3, 4, 5]], np.float32)}, signature_name="peak"
    )
    response = predictions.Predict(request, timeout=30)
    assert response.model_spec.signature_name == "peak"
    assert list(response.outputs["peak"].float_val) == [9.0]


def test_predict_on_an_explicit_version(predictions: Any) -> None:
    from google.protobuf import wrappers_pb2

    request = predict_request(
        "half", {"x": np.array([0.0], np.float32)}, version=wrappers_pb2.Int64Value(value=123)
    )
    assert predictions.Predict(request, timeout=30).model_spec.version.value == 123


def test_default_signature_predictions_go_through_the_batcher(
    served: InProcessServer, predictions: Any
) -> None:
    def batches() -> int:
        def read() -> int:
            with served.manager.lease("half") as record:
                return record.batcher.batches  # type: ignore[no-any-return]

        return served.loop.call(read)

    before = batches()
    predictions.Predict(predict_request("half", {"x": np.array([1.0], np.float32)}), timeout=30)
    assert batches() == before + 1


# -- Predict: bad input --------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "inputs", "spec_fields", "code", "message"),
    [
        pytest.param(
            "nope", {"x": np.zeros(1, np.float32)}, {}, "NOT_FOUND", "model 'nope'", id="unknown-model"
        ),
        pytest.param(
            "half",
            {"x": np.zeros(1, np.float32)},
            {"version_label": "stable"},
            "NOT_FOUND",
            "label 'stable'",
            id="unknown-label",
        ),
        pytest.param(
            "half",
            {"z": np.zeros(1, np.float32)},
            {},
            "INVALID_ARGUMENT",
            "inputs ['z'] do not match the model's inputs ['x']: missing ['x'], unexpected ['z']",
            id="name",
        ),
        pytest.param(
            "sensor",
            {
                "tag": np.array([b"a"]),
                "signal": np.zeros((1, 4), np.float32),
                "sensor": np.zeros((1, 2, 2), np.float32),
            },
            {},
            "INVALID_ARGUMENT",
            "input 'signal' has shape [1,4] but the model expects [?,5]",
            id="shape",
        ),
        pytest.param(
            "half",
            {"x": np.array([b"1.0"])},
            {},
            "INVALID_ARGUMENT",
            "input 'x' has dtype string but the model expects float32",
            id="dtype",
        ),
        pytest.param(
            "half",
            {"x": np.zeros(MAX_EXAMPLES + 1, np.float32)},
            {},
            "INVALID_ARGUMENT",
            f"batch size {MAX_EXAMPLES + 1} exceeds the limit of {MAX_EXAMPLES}",
            id="too-many",
        ),
        pytest.param(
            "half",
            {"x": np.zeros(1, np.float32)},
            {"signature_name": "nope"},
            "INVALID_ARGUMENT",
            'Serving signature key "nope" not found',
            id="signature",
        ),
    ],
)
def test_bad_predict_requests_get_a_precise_status(
    predictions: Any, model: str, inputs: dict[str, Any], spec_fields: dict[str, Any], code: str, message: str
) -> None:
    got, details = error(predictions.Predict, predict_request(model, inputs, **spec_fields))
    assert got == grpc.StatusCode[code], details
    assert message in details


def test_unknown_version_is_not_found(predictions: Any) -> None:
    from google.protobuf import wrappers_pb2

    request = predict_request(
        "half", {"x": np.zeros(1, np.float32)}, version=wrappers_pb2.Int64Value(value=7)
    )
    code, details = error(predictions.Predict, request)
    assert code == grpc.StatusCode.NOT_FOUND and "version 7" in details


def test_tensor_content_of_the_wrong_length_is_invalid_argument(predictions: Any) -> None:
    proto = tf.make_tensor_proto(np.zeros(3, np.float32))
    proto.tensor_content = proto.tensor_content[:8]
    code, details = error(predictions.Predict, predict_request("half", {"x": proto}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'x' has 8 bytes of tensor_content but DT_FLOAT[3] needs 12" in details


def test_an_unknown_output_filter_is_invalid_argument(predictions: Any) -> None:
    request = predict_request("half", {"x": np.zeros(1, np.float32)})
    request.output_filter.append("nope")
    code, details = error(predictions.Predict, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "['nope']; outputs are ['y']" in details


# -- GetModelMetadata, Classify, Regress --------------------------------------------


def test_metadata_is_the_signature_def_map_in_an_any(predictions: Any) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=spec("half"), metadata_field=["signature_def"]
    )
    response = predictions.GetModelMetadata(request, timeout=30)
    assert response.model_spec.version.value == 123
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_defs)
    defs = signature_defs.signature_def
    assert sorted(defs) == ["serving_default", CLASSIFY, REGRESS]
    assert defs["serving_default"].method_name == "tensorflow/serving/predict"
    assert defs["serving_default"].inputs["x"].dtype == types_pb2.DT_FLOAT
    assert defs[REGRESS].method_name == REGRESS


def test_metadata_without_a_supported_field_is_invalid_argument(predictions: Any) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=spec("half"), metadata_field=["graph"]
    )
    code, details = error(predictions.GetModelMetadata, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "['graph'] is not supported" in details


def test_regress_answers_one_value_per_example(predictions: Any) -> None:
    response = predictions.Regress(regress_request([1.0, 2.0], signature_name=REGRESS), timeout=30)
    assert [r.value for r in response.result.regressions] == [3.5, 4.0]
    assert response.model_spec.signature_name == REGRESS


def test_classify_answers_labels_with_scores(predictions: Any) -> None:
    request = classification_pb2.ClassificationRequest(model_spec=spec("half", signature_name=CLASSIFY))
    context = request.input.example_list_with_context
    context.examples.add()
    context.context.features.feature["x"].float_list.value.append(2.0)  # shared by every example
    response = predictions.Classify(request, timeout=30)
    [classes] = [[(c.label, c.score) for c in row.classes] for row in response.result.classifications]
    assert classes == [("high", 4.0), ("low", -4.0)]


def test_regress_on_a_predict_signature_is_invalid_argument(predictions: Any) -> None:
    code, details = error(predictions.Regress, regress_request([1.0]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "has method 'tensorflow/serving/predict', expected 'tensorflow/serving/regress'" in details


def test_regress_without_examples_is_invalid_argument(predictions: Any) -> None:
    code, details = error(predictions.Regress, regress_request([], signature_name=REGRESS))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "input has neither example_list" in details


# -- ModelService ----------------------------------------------------------------------


def test_model_status_lists_available_versions_with_ok_status(models: Any) -> None:
    response = models.GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec=spec("half")), timeout=30
    )
    [status] = response.model_version_status
    assert (status.version, status.state) == (123, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    assert (status.status.error_code, status.status.error_message) == (0, "")


@pytest.mark.parametrize(
    ("spec_fields", "message"),
    [
        pytest.param({"name": "nope"}, "model 'nope'", id="model"),
        pytest.param({"name": "half", "version_label": "canary"}, "no version label 'canary'", id="label"),
    ],
)
def test_model_status_of_unknown_things_is_not_found(
    models: Any, spec_fields: dict[str, Any], message: str
) -> None:
    request = get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(**spec_fields))
    code, details = error(models.GetModelStatus, request)
    assert code == grpc.StatusCode.NOT_FOUND and message in details


def test_reload_config_needs_a_config_and_a_server_run_from_a_config_file(models: Any) -> None:
    from tensorflow_serving.apis import model_management_pb2
    from tensorflow_serving.config import model_server_config_pb2

    code, details = error(models.HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "config is not set" in details
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name="half", base_path="/models/half")
    request = model_management_pb2.ReloadConfigRequest(config=config)
    code, details = error(models.HandleReloadConfigRequest, request)  # this server reads a repository
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "--model-config-file" in details
