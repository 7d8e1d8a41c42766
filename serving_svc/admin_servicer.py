"""ServingAdminService: batching knobs per model, read and changed at run time (core: BatchingRegistry)."""

from __future__ import annotations

from typing import Any

import grpc
from mlmesh.errors import InvalidArgument, grpc_errors
from mlmesh.serving.v1 import admin_pb2, admin_pb2_grpc

from serving_svc.core.batch_options import BatchingOptions
from serving_svc.core.batcher import BatchingRegistry

ADMIN_SERVICE_NAME = admin_pb2.DESCRIPTOR.services_by_name["ServingAdminService"].full_name

_SCALARS = (
    "max_batch_size",
    "batch_timeout_micros",
    "max_enqueued_batches",
    "num_batch_threads",
    "max_queue",
)


def to_proto(options: BatchingOptions) -> admin_pb2.BatchingParameters:
    params = admin_pb2.BatchingParameters(**{name: getattr(options, name) for name in _SCALARS})
    params.allowed_batch_sizes.sizes.extend(options.allowed_batch_sizes)
    return params


def changes_from_proto(params: admin_pb2.BatchingParameters) -> dict[str, Any]:
    """Only the fields the request set; InvalidArgument if it set none."""
    changes: dict[str, Any] = {name: getattr(params, name) for name in _SCALARS if params.HasField(name)}
    if params.HasField("allowed_batch_sizes"):
        changes["allowed_batch_sizes"] = tuple(params.allowed_batch_sizes.sizes)
    if not changes:
        raise InvalidArgument(
            f"parameters set no field; expected some of {[*_SCALARS, 'allowed_batch_sizes']}"
        )
    return changes


class ServingAdminServicer(admin_pb2_grpc.ServingAdminServiceServicer):
    """Thin edge over the manager's BatchingRegistry; runs on the server's event loop."""

    def __init__(self, registry: BatchingRegistry) -> None:
        self._registry = registry

    def _answer(self, model_name: str) -> dict[str, Any]:
        models = [model_name] if model_name else self._registry.models()
        return {
            "defaults": to_proto(self._registry.defaults),
            "models": [
                admin_pb2.ModelBatching(model_name=m, parameters=to_proto(self._registry.options_for(m)))
                for m in models
            ],
        }

    @grpc_errors
    async def GetBatching(
        self, request: admin_pb2.GetBatchingRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetBatchingResponse:
        if request.model_name:
            self._registry.require(request.model_name)
        return admin_pb2.GetBatchingResponse(**self._answer(request.model_name))

    @grpc_errors
    async def SetBatching(
        self, request: admin_pb2.SetBatchingRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SetBatchingResponse:
        changes = changes_from_proto(request.parameters)
        self._registry.set(request.model_name or None, changes)
        return admin_pb2.SetBatchingResponse(**self._answer(request.model_name))
