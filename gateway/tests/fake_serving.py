"""A real ServingService process with deterministic answers, for gateway tests.

`python -m gateway.tests.fake_serving --replica-id r0 --port 0 --port-file F`

- Predict with `instances` (lists of numbers) -> predictions = each number x 2;
  with tensor `inputs` -> outputs[name] = input x 2 (float64). RestPredict (JSON
  `POST /v1/models/<m>:predict`, raw body in and out) doubles `instances` the same way; RestGetModelStatus
  answers version 1 AVAILABLE in TF Serving's JSON.
- Model "missing" -> NOT_FOUND; a non-numeric instance or no input -> INVALID_ARGUMENT.
- Request header `x-test-delay-ms: N` sleeps N ms first; the remaining client
  deadline (as seen by the replica) comes back in trailer `x-deadline-remaining-ms`.
- Successful answers carry header `x-replica-id` (not in the body, so answers
  from different replicas compare equal).
- grpc.health.v1 SERVING under "" and "mlmesh.serving.v1.ServingService" (run_service).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import grpc
import numpy as np
from google.api import httpbody_pb2
from google.protobuf import struct_pb2
from mlmesh import tensor
from mlmesh.errors import InvalidArgument, NotFound, grpc_errors
from mlmesh.server import run_service
from mlmesh.serving.v1 import serving_pb2, serving_pb2_grpc
from mlmesh.settings import ServiceSettings, load_settings
from pydantic import Field
from pydantic_settings import SettingsConfigDict

SERVICE = serving_pb2.DESCRIPTOR.services_by_name["ServingService"].full_name


class FakeServingSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="MLMESH_FAKE_SERVING_", extra="forbid", validate_default=True
    )

    replica_id: str = Field("r0", min_length=1, description="Reported in the x-replica-id header.")


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return None


def _double_json(instances: list[object]) -> list[list[float]]:
    out = []
    for i, row in enumerate(instances):
        if not isinstance(row, list):
            raise InvalidArgument(f"instance {i} is {type(row).__name__}, expected a list of numbers")
        for j, x in enumerate(row):
            if isinstance(x, bool) or not isinstance(x, int | float):
                raise InvalidArgument(f"instance {i} element {j} is {type(x).__name__}, expected a number")
        out.append([x * 2 for x in row])
    return out


def _double_instances(instances: struct_pb2.ListValue) -> struct_pb2.ListValue:
    out = struct_pb2.ListValue()
    for i, value in enumerate(instances.values):
        if value.WhichOneof("kind") != "list_value":
            raise InvalidArgument(f"instance {i} is {value.WhichOneof('kind')}, expected a list of numbers")
        row = out.add_list()
        for j, x in enumerate(value.list_value.values):
            if x.WhichOneof("kind") != "number_value":
                raise InvalidArgument(
                    f"instance {i} element {j} is {x.WhichOneof('kind')}, expected a number"
                )
            row.append(x.number_value * 2)
    return out


class FakeServingServicer(serving_pb2_grpc.ServingServiceServicer):
    """Stateless, so safe under any concurrency."""

    def __init__(self, replica_id: str) -> None:
        self._replica_id = replica_id

    async def _maybe_delay(self, context: grpc.aio.ServicerContext) -> None:
        trailers = [
            (k, v) for k, v in context.invocation_metadata() or () if k.startswith("x-envoy-expected")
        ]
        remaining = context.time_remaining()
        if remaining is not None:
            trailers.append(("x-deadline-remaining-ms", str(int(remaining * 1000))))
        context.set_trailing_metadata(tuple(trailers))
        delay = _metadata(context, "x-test-delay-ms")
        if delay:
            await asyncio.sleep(int(delay) / 1000)

    @grpc_errors
    async def Predict(
        self, request: serving_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.PredictResponse:
        await self._maybe_delay(context)
        if request.model_name == "missing":
            raise NotFound(f"model {request.model_name!r} not found; available: ['m']")
        response = serving_pb2.PredictResponse(model_name=request.model_name, version=1)
        if request.inputs:
            for name, t in request.inputs.items():
                arr = tensor.from_proto(t, name).astype(np.float64) * 2
                response.outputs[name].CopyFrom(tensor.to_proto(arr))
        elif request.instances.values:
            response.predictions.CopyFrom(_double_instances(request.instances))
        else:
            raise InvalidArgument("request has neither inputs nor instances")
        await context.send_initial_metadata((("x-replica-id", self._replica_id),))
        return response

    @grpc_errors
    async def GetModelStatus(
        self, request: serving_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.GetModelStatusResponse:
        await self._maybe_delay(context)
        if not request.model_name:
            raise InvalidArgument("model_name is empty")
        if request.model_name == "missing":
            raise NotFound(f"model {request.model_name!r} not found; available: ['m']")
        await context.send_initial_metadata((("x-replica-id", self._replica_id),))
        return serving_pb2.GetModelStatusResponse(
            model_name=request.model_name,
            versions=[
                serving_pb2.ModelVersionStatus(version=1, state=serving_pb2.MODEL_VERSION_STATE_AVAILABLE)
            ],
        )

    # The REST methods the transcoder maps TF Serving's JSON API to.

    @grpc_errors
    async def RestPredict(
        self, request: serving_pb2.RestJsonRequest, context: grpc.aio.ServicerContext
    ) -> httpbody_pb2.HttpBody:
        await self._maybe_delay(context)
        if request.model_name == "missing":
            raise NotFound(f"model {request.model_name!r} not found; available: ['m']")
        try:
            instances = json.loads(request.body.data).get("instances")
        except (ValueError, AttributeError):
            raise InvalidArgument("request body is not a JSON object") from None
        if not isinstance(instances, list):
            raise InvalidArgument("request has neither inputs nor instances")
        predictions = _double_json(instances)
        await context.send_initial_metadata((("x-replica-id", self._replica_id),))
        return httpbody_pb2.HttpBody(
            content_type="application/json", data=json.dumps({"predictions": predictions}).encode()
        )

    @grpc_errors
    async def RestGetModelStatus(
        self, request: serving_pb2.RestModelRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.RestGetModelStatusResponse:
        await self._maybe_delay(context)
        if request.model_name == "missing":
            raise NotFound(f"model {request.model_name!r} not found; available: ['m']")
        await context.send_initial_metadata((("x-replica-id", self._replica_id),))
        return serving_pb2.RestGetModelStatusResponse(
            model_version_status=[
                serving_pb2.RestModelVersionStatus(
                    version=1,
                    state=serving_pb2.RestModelVersionStatus.AVAILABLE,
                    status=serving_pb2.RestStatus(),
                )
            ]
        )


def main(argv: Sequence[str] | None = None) -> None:
    settings = load_settings(FakeServingSettings, list(argv) if argv is not None else None)

    def add(server: grpc.aio.Server) -> list[str]:
        serving_pb2_grpc.add_ServingServiceServicer_to_server(
            FakeServingServicer(settings.replica_id), server
        )
        return [SERVICE]

    asyncio.run(
        run_service(
            settings, name="fake_serving", add_servicers=add, log_context={"replica": settings.replica_id}
        )
    )


if __name__ == "__main__":
    main()
