"""TensorFlow Serving's own gRPC API: tensorflow.serving.PredictionService and ModelService.

The messages are the ones of the `tensorflow-serving-api` package, so
Google's client (`prediction_service_pb2_grpc.PredictionServiceStub`) works
unchanged. Thin: TensorProto ↔ arrays in core.tfs_codec, semantics in core.tfs.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import grpc
from google.protobuf import any_pb2, text_format, wrappers_pb2
from mlmesh.errors import InvalidArgument, grpc_errors
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
    status_pb2,
)

from serving_svc.core import tfs
from serving_svc.core.examples import serialized_examples
from serving_svc.core.inputs import prepare_tensors
from serving_svc.core.manager import ModelManager, ModelVersion
from serving_svc.core.signature import CLASSIFY_METHOD, REGRESS_METHOD
from serving_svc.core.tfs_codec import arrays_from_protos, to_proto

# From the descriptors (importing them also puts the services in the default pool, which
# reflection serves: the *_pb2_grpc modules alone do not).
PREDICTION_SERVICE = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
MODEL_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
SIGNATURE_DEF_FIELD = "signature_def"

_STATES = get_model_status_pb2.ModelVersionStatus.State
_ERROR_CODES = status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type


def _version_of(spec: model_pb2.ModelSpec) -> tuple[int, str]:
    """(version, label) of a ModelSpec; (0, "") means the newest."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        if spec.version.value <= 0:
            raise InvalidArgument(f"model_spec.version is {spec.version.value}; versions are positive")
        return spec.version.value, ""
    if choice == "version_label":
        return 0, spec.version_label
    return 0, ""


def _lease(manager: ModelManager, spec: model_pb2.ModelSpec) -> AbstractContextManager[ModelVersion]:
    version, label = _version_of(spec)
    return tfs.lease(manager, spec.name, version, label)


def _served_spec(record: ModelVersion, signature: str) -> model_pb2.ModelSpec:
    return model_pb2.ModelSpec(
        name=record.model, version=wrappers_pb2.Int64Value(value=record.version), signature_name=signature
    )


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, GetModelMetadata, Classify, Regress; on the server's event loop (as the manager requires)."""

    def __init__(self, manager: ModelManager, *, max_request_examples: int) -> None:
        self._manager = manager
        self._max_examples = max_request_examples

    @grpc_errors
    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        with _lease(self._manager, request.model_spec) as record:
            servable = tfs.servable_of(record)
            signature = servable.signature(request.model_spec.signature_name)
            names = tfs.select_outputs(signature, request.output_filter)
            arrays, n = prepare_tensors(
                signature.inputs, arrays_from_protos(request.inputs), self._max_examples
            )
            outputs = await tfs.run(record, signature, arrays, n)
            response = predict_pb2.PredictResponse(model_spec=_served_spec(record, signature.name))
            for name in names:
                response.outputs[name].CopyFrom(to_proto(outputs[name]))
            return response

    @grpc_errors
    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        fields = list(request.metadata_field)
        if not fields:
            raise InvalidArgument("GetModelMetadataRequest must specify at least one metadata_field")
        unsupported = sorted(set(fields) - {SIGNATURE_DEF_FIELD})
        if unsupported:
            raise InvalidArgument(
                f"metadata_field {unsupported} is not supported; supported: ['{SIGNATURE_DEF_FIELD}']"
            )
        with _lease(self._manager, request.model_spec) as record:
            servable = tfs.servable_of(record)
            packed = any_pb2.Any()
            packed.Pack(get_model_metadata_pb2.SignatureDefMap(signature_def=servable.signature_defs))
            return get_model_metadata_pb2.GetModelMetadataResponse(
                model_spec=_served_spec(record, ""), metadata={SIGNATURE_DEF_FIELD: packed}
            )

    @grpc_errors
    async def Classify(
        self, request: classification_pb2.ClassificationRequest, context: grpc.aio.ServicerContext
    ) -> classification_pb2.ClassificationResponse:
        with _lease(self._manager, request.model_spec) as record:
            signature = tfs.examples_signature(
                tfs.servable_of(record), request.model_spec.signature_name, CLASSIFY_METHOD
            )
            examples = serialized_examples(request.input)
            outputs = await tfs.run_examples(record, signature, examples)
            result = classification_pb2.ClassificationResult()
            for row in tfs.classifications(outputs, len(examples)):
                result.classifications.add().classes.extend(
                    classification_pb2.Class(label=c.label, score=c.score) for c in row
                )
            return classification_pb2.ClassificationResponse(
                model_spec=_served_spec(record, signature.name), result=result
            )

    @grpc_errors
    async def Regress(
        self, request: regression_pb2.RegressionRequest, context: grpc.aio.ServicerContext
    ) -> regression_pb2.RegressionResponse:
        with _lease(self._manager, request.model_spec) as record:
            signature = tfs.examples_signature(
                tfs.servable_of(record), request.model_spec.signature_name, REGRESS_METHOD
            )
            examples = serialized_examples(request.input)
            outputs = await tfs.run_examples(record, signature, examples)
            result = regression_pb2.RegressionResult(
                regressions=[
                    regression_pb2.Regression(value=v) for v in tfs.regressions(outputs, len(examples))
                ]
            )
            return regression_pb2.RegressionResponse(
                model_spec=_served_spec(record, signature.name), result=result
            )


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus, and HandleReloadConfigRequest (which rewrites the watched model-config file)."""

    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager

    @grpc_errors
    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        version, label = _version_of(request.model_spec)
        statuses = tfs.version_statuses(self._manager, request.model_spec.name, version, label)
        return get_model_status_pb2.GetModelStatusResponse(
            model_version_status=[
                get_model_status_pb2.ModelVersionStatus(
                    version=s.version,
                    state=_STATES.Value(s.state),
                    status=status_pb2.StatusProto(
                        error_code=_ERROR_CODES.values_by_name[s.error_code].number,
                        error_message=s.error_message,
                    ),
                )
                for s in statuses
            ]
        )

    @grpc_errors
    async def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        if not request.HasField("config"):
            raise InvalidArgument("config is not set: send the whole ModelServerConfig to serve")
        outcome = await tfs.reload_config(self._manager, text_format.MessageToString(request.config))
        return model_management_pb2.ReloadConfigResponse(
            status=status_pb2.StatusProto(
                error_code=_ERROR_CODES.values_by_name[outcome.error_code].number,
                error_message=outcome.error_message,
            )
        )


def add_to_server(manager: ModelManager, server: grpc.aio.Server, *, max_request_examples: int) -> list[str]:
    """Register both services; returns their names (for health and reflection)."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(manager, max_request_examples=max_request_examples), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(manager), server)
    return [PREDICTION_SERVICE, MODEL_SERVICE]
