"""ServingService: proto ↔ domain for Predict, GetModelStatus and the REST methods; work is in core."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import numpy as np
from google.api import httpbody_pb2
from google.protobuf import json_format, struct_pb2
from mlmesh import tensor
from mlmesh.errors import InvalidArgument, grpc_errors, require
from mlmesh.serving.v1 import serving_pb2, serving_pb2_grpc

from serving_svc.core import json_tensors, tfs
from serving_svc.core.examples import examples_from_json
from serving_svc.core.inputs import prepare_columns, prepare_instances, prepare_tensors
from serving_svc.core.manager import ModelManager, VersionState
from serving_svc.core.signature import CLASSIFY_METHOD, REGRESS_METHOD, InputSpec

# Requests with more instances than this are converted in a worker thread. Protobuf Values
# (gRPC Predict) cost ~0.3 ms per 28x28 example; REST JSON from json.loads ~0.05 ms.
INLINE_INSTANCES = 8
INLINE_JSON_INSTANCES = 32

JSON = "application/json"
_PREDICT_KEYS = frozenset({"signature_name", "instances", "inputs"})
_EXAMPLES_KEYS = frozenset({"signature_name", "context", "examples"})

SERVICE_NAME = serving_pb2.DESCRIPTOR.services_by_name["ServingService"].full_name

_STATES = {
    VersionState.START: serving_pb2.MODEL_VERSION_STATE_LOADING,
    VersionState.LOADING: serving_pb2.MODEL_VERSION_STATE_LOADING,
    VersionState.AVAILABLE: serving_pb2.MODEL_VERSION_STATE_AVAILABLE,
    VersionState.UNLOADING: serving_pb2.MODEL_VERSION_STATE_UNLOADING,
    VersionState.END: serving_pb2.MODEL_VERSION_STATE_END,
}


class ServingServicer(serving_pb2_grpc.ServingServiceServicer):
    """Thin edge over ModelManager. Runs on the server's event loop (as the manager requires)."""

    def __init__(self, manager: ModelManager, *, max_request_examples: int) -> None:
        self._manager = manager
        self._max_examples = max_request_examples

    @grpc_errors
    async def Predict(
        self, request: serving_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.PredictResponse:
        require(bool(request.model_name), "model_name is empty")
        require(
            request.version >= 0, f"version is {request.version}; expected 0 (newest) or a positive version"
        )
        has_instances = request.HasField("instances")
        if bool(request.inputs) == has_instances:
            raise InvalidArgument(
                "give exactly one of `inputs` (tensors) or `instances` (one entry per example); "
                + ("both were set" if has_instances else "neither was set")
            )
        with self._manager.lease(request.model_name, request.version) as version:
            servable, batcher = version.servable, version.batcher
            assert servable is not None and batcher is not None  # guaranteed while AVAILABLE
            if has_instances:
                arrays, n = await self._from_instances(servable.inputs, request.instances)
            else:
                arrays, n = prepare_tensors(
                    servable.inputs, tensor.map_from_proto(request.inputs), self._max_examples
                )
            outputs = await batcher.submit(arrays, n)
            response = serving_pb2.PredictResponse(
                model_name=request.model_name, version=version.version, outputs=tensor.map_to_proto(outputs)
            )
            if has_instances:
                # TF Serving's `predictions`: the first output (sorted by name), one entry per example.
                response.predictions.extend(outputs[servable.output_names[0]].tolist())
            return response

    async def _from_instances(
        self, specs: Mapping[str, InputSpec], instances: struct_pb2.ListValue
    ) -> tuple[dict[str, np.ndarray], int]:
        # Walking protobuf Values costs ~0.3 ms per 28x28 example (json.loads ~0.05 ms).
        return await _converted(
            len(instances.values) <= INLINE_INSTANCES,
            lambda: prepare_instances(specs, _instances(instances), self._max_examples),
        )

    @grpc_errors
    async def GetModelStatus(
        self, request: serving_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.GetModelStatusResponse:
        require(bool(request.model_name), "model_name is empty")
        versions = self._manager.status(request.model_name)
        return serving_pb2.GetModelStatusResponse(
            model_name=request.model_name,
            versions=[
                # mlmesh's proto keeps FAILED for a load that ended in error (the CLI reads it).
                serving_pb2.ModelVersionStatus(
                    version=v.version,
                    state=serving_pb2.MODEL_VERSION_STATE_FAILED if v.failed else _STATES[v.state],
                    error=v.error,
                )
                for v in versions
            ],
        )

    # -- TF Serving's REST API (reached through the gateway's JSON transcoder) --

    @grpc_errors
    async def RestGetModelStatus(
        self, request: serving_pb2.RestModelRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.RestGetModelStatusResponse:
        require(bool(request.model_name), "model_name is empty")
        statuses = tfs.version_statuses(
            self._manager, request.model_name, request.version, request.version_label
        )
        return serving_pb2.RestGetModelStatusResponse(
            model_version_status=[
                serving_pb2.RestModelVersionStatus(
                    version=s.version,
                    state=serving_pb2.RestModelVersionStatus.State.Value(s.state),
                    status=serving_pb2.RestStatus(
                        error_code=serving_pb2.RestStatus.Code.Value(s.error_code),
                        error_message=s.error_message,
                    ),
                )
                for s in statuses
            ]
        )

    @grpc_errors
    async def RestGetModelMetadata(
        self, request: serving_pb2.RestModelRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.RestGetModelMetadataResponse:
        from tensorflow_serving.apis import get_model_metadata_pb2  # imports tensorflow: serving only

        with tfs.lease(self._manager, request.model_name, request.version, request.version_label) as record:
            servable = tfs.servable_of(record)
            signature_defs = json_format.MessageToDict(
                get_model_metadata_pb2.SignatureDefMap(signature_def=servable.signature_defs),
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            )
            response = serving_pb2.RestGetModelMetadataResponse(
                model_spec=serving_pb2.RestModelSpec(name=record.model, signature_name="")
            )
            response.model_spec.version.value = record.version
            response.metadata.update({"signature_def": signature_defs})
            return response

    @grpc_errors
    async def RestPredict(
        self, request: serving_pb2.RestJsonRequest, context: grpc.aio.ServicerContext
    ) -> httpbody_pb2.HttpBody:
        require(bool(request.model_name), "model_name is empty")
        signature_name, instances, inputs = _predict_body(request.body.data)
        with tfs.lease(self._manager, request.model_name, request.version, request.version_label) as record:
            signature = tfs.servable_of(record).signature(signature_name)
            if instances is not None:
                arrays, n = await _converted(
                    len(instances) <= INLINE_JSON_INSTANCES,
                    lambda: prepare_instances(signature.inputs, instances, self._max_examples),
                )
            else:
                arrays, n = await _converted(
                    _n_hint(inputs) <= INLINE_JSON_INSTANCES,
                    lambda: prepare_columns(signature.inputs, inputs, self._max_examples),
                )
            outputs = await tfs.run(record, signature, arrays, n)
            names = signature.output_names
            answer = (
                {"predictions": json_tensors.rows(outputs, names)}
                if instances is not None
                else {"outputs": json_tensors.columns(outputs, names)}
            )
            return _json_answer(answer)

    @grpc_errors
    async def RestClassify(
        self, request: serving_pb2.RestJsonRequest, context: grpc.aio.ServicerContext
    ) -> httpbody_pb2.HttpBody:
        rows = await self._examples(request, CLASSIFY_METHOD)
        return _json_answer({"result": [[[c.label, c.score] for c in row] for row in rows]})

    @grpc_errors
    async def RestRegress(
        self, request: serving_pb2.RestJsonRequest, context: grpc.aio.ServicerContext
    ) -> httpbody_pb2.HttpBody:
        return _json_answer({"result": list(await self._examples(request, REGRESS_METHOD))})

    async def _examples(self, request: serving_pb2.RestJsonRequest, method: str) -> Any:
        require(bool(request.model_name), "model_name is empty")
        signature_name, examples_json, context_json = _examples_body(request.body.data)
        examples = examples_from_json(examples_json, context_json)
        with tfs.lease(self._manager, request.model_name, request.version, request.version_label) as record:
            signature = tfs.examples_signature(tfs.servable_of(record), signature_name, method)
            outputs = await tfs.run_examples(record, signature, examples)
            if method == CLASSIFY_METHOD:
                return tfs.classifications(outputs, len(examples))
            return tfs.regressions(outputs, len(examples))


def _json_answer(answer: Any) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type=JSON, data=json.dumps(answer).encode())


async def _converted(
    inline: bool, convert: Callable[[], tuple[dict[str, np.ndarray], int]]
) -> tuple[dict[str, np.ndarray], int]:
    """Run a request's input conversion: inline when small, else off the event loop so a
    large request does not stall everyone else's."""
    return convert() if inline else await asyncio.to_thread(convert)


def _n_hint(inputs: Any) -> int:
    """Roughly how many examples a columnar request holds (to decide where to convert it)."""
    first = next(iter(inputs.values()), None) if isinstance(inputs, dict) else inputs
    return len(first) if isinstance(first, list) else 1


def _json_body(data: bytes, keys: frozenset[str], expected: str) -> tuple[dict[str, Any], str]:
    """A REST body → (the JSON object, its signature_name); InvalidArgument says what is wrong."""
    if not data:
        raise InvalidArgument(f"request body is empty; expected a JSON object with {expected}")
    try:
        body = json.loads(data)
    except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
        raise InvalidArgument(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise InvalidArgument(f"request body is a JSON {_json_kind(body)}; expected an object")
    unknown = sorted(set(body) - keys)
    if unknown:
        raise InvalidArgument(f"request body has unknown fields {unknown}; expected {sorted(keys)}")
    signature_name = body.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise InvalidArgument(f"'signature_name' is a JSON {_json_kind(signature_name)}; expected a string")
    return body, signature_name


def _examples_body(data: bytes) -> tuple[str, list[Any], dict[str, Any] | None]:
    """TF Serving's classify/regress JSON → (signature_name, examples, context or None)."""
    body, signature_name = _json_body(data, _EXAMPLES_KEYS, "'examples'")
    examples = body.get("examples")
    if not isinstance(examples, list):
        raise InvalidArgument(
            "'examples' is missing; expected a list of objects"
            if examples is None
            else f"'examples' is a JSON {_json_kind(examples)}; expected a list of objects"
        )
    context = body.get("context")
    if context is not None and not isinstance(context, dict):
        raise InvalidArgument(f"'context' is a JSON {_json_kind(context)}; expected an object")
    return signature_name, examples, context


def _predict_body(data: bytes) -> tuple[str, list[Any] | None, Any]:
    """TF Serving's predict JSON → (signature_name, instances or None, inputs)."""
    body, signature_name = _json_body(data, _PREDICT_KEYS, "'instances' or 'inputs'")
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances == has_inputs:
        raise InvalidArgument(
            "give exactly one of 'instances' (row format) or 'inputs' (columnar format); "
            + ("both were set" if has_instances else "neither was set")
        )
    if has_instances:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise InvalidArgument(f"'instances' is a JSON {_json_kind(instances)}; expected a list")
        return signature_name, instances, None
    return signature_name, None, body["inputs"]


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "bool", int: "number", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _instances(instances: struct_pb2.ListValue) -> list[Any]:
    """ListValue → plain Python, about 3 times faster than json_format.MessageToDict on pixel data."""
    return [_value(v, i) for i, v in enumerate(instances.values)]


def _value(value: struct_pb2.Value, index: int) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return value.number_value
    if kind == "list_value":
        return _list(value.list_value, index)
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {k: _value(v, index) for k, v in value.struct_value.fields.items()}
    found = kind.removesuffix("_value") if kind else "missing value"
    raise InvalidArgument(f"instance {index} holds a {found}; expected numbers, bools, lists or objects")


def _list(values: struct_pb2.ListValue, index: int) -> list[Any]:
    out: list[Any] = []
    append = out.append
    for v in values.values:
        kind = v.WhichOneof("kind")
        if kind == "number_value":
            append(v.number_value)
        elif kind == "list_value":
            append(_list(v.list_value, index))
        else:
            append(_value(v, index))
    return out
