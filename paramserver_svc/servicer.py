"""ParameterServerService: proto <-> domain, nothing else.

Each RPC decodes its request, calls the shard in a thread pool (NumPy work
and the job locks must not block the event loop) and encodes the answer.
Domain errors become gRPC statuses through `mlmesh.errors.grpc_errors`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

import grpc
import numpy as np
from mlmesh import tensor
from mlmesh.errors import grpc_errors
from mlmesh.paramserver.v1 import paramserver_pb2 as pb
from mlmesh.paramserver.v1 import paramserver_pb2_grpc
from mlmesh.types.v1 import tensor_pb2

from paramserver_svc.core.shard import RowValues, Shard
from paramserver_svc.core.specs import InitSpec, OptimizerConfig, VarSpec

T = TypeVar("T")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ParameterServerService"].full_name


def _rows(ids: object) -> np.ndarray:
    return np.array(ids, dtype=np.int64)


def _fill(out: tensor_pb2.Tensor, array: np.ndarray) -> None:
    """Encode in place into a message field (maps and repeated fields cannot be assigned)."""
    out.dtype = tensor.dtype_code(array.dtype)  # type: ignore[assignment]
    out.shape.extend(array.shape)
    out.content = np.ascontiguousarray(array).tobytes()


def _var_spec(v: pb.VariableSpec) -> tuple[VarSpec, InitSpec]:
    dtype = tensor.numpy_dtype(v.dtype, f"variable {v.name!r}")
    spec = VarSpec(v.name, dtype, tuple(int(d) for d in v.shape), v.row_sharded)
    ini = v.initializer
    value = tensor.from_proto(ini.value, f"initial value of {v.name!r}") if ini.HasField("value") else None
    return spec, InitSpec(ini.kind or "zeros", ini.scale, ini.seed, value)


def _optimizer(request: pb.RegisterVariablesRequest) -> OptimizerConfig | None:
    if not request.HasField("optimizer"):
        return None
    o = request.optimizer
    return OptimizerConfig.parse(o.kind, o.learning_rate, o.beta_1, o.beta_2, o.epsilon)


class ParameterServerServicer(paramserver_pb2_grpc.ParameterServerServiceServicer):
    """Thin adapter over one `Shard`. Safe for concurrent calls (the shard is)."""

    def __init__(self, shard: Shard, executor: Executor) -> None:
        self._shard = shard
        self._executor = executor

    async def _offload(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    @grpc_errors
    async def RegisterVariables(
        self, request: pb.RegisterVariablesRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterVariablesResponse:
        def run() -> pb.RegisterVariablesResponse:
            specs = [_var_spec(v) for v in request.variables]
            created, existing = self._shard.register(request.job_id, specs, _optimizer(request))
            return pb.RegisterVariablesResponse(created=created, existing=existing)

        return await self._offload(run)

    @grpc_errors
    async def Pull(self, request: pb.PullRequest, context: grpc.aio.ServicerContext) -> pb.PullResponse:
        def run() -> pb.PullResponse:
            rows = [RowValues(rs.name, _rows(rs.rows)) for rs in request.rows]
            result = self._shard.pull(request.job_id, list(request.dense), rows)
            resp = pb.PullResponse(version=result.version)
            for name, array in result.dense.items():
                _fill(resp.dense[name], array)
            for rv in result.rows:
                out = resp.rows.add(name=rv.name, rows=rv.rows.tolist())
                assert rv.values is not None
                _fill(out.values, rv.values)
            return resp

        return await self._offload(run)

    @grpc_errors
    async def Push(self, request: pb.PushRequest, context: grpc.aio.ServicerContext) -> pb.PushResponse:
        def run() -> pb.PushResponse:
            dense = {name: tensor.from_proto(t, name) for name, t in request.dense_grads.items()}
            rows = [
                RowValues(
                    rs.name,
                    _rows(rs.rows),
                    tensor.from_proto(rs.values, f"{rs.name} rows") if rs.HasField("values") else None,
                )
                for rs in request.row_grads
            ]
            result = self._shard.push(request.job_id, request.worker_id, request.step, dense, rows)
            return pb.PushResponse(applied=result.applied, version=result.version)

        return await self._offload(run)

    @grpc_errors
    async def SaveCheckpoint(
        self, request: pb.SaveCheckpointRequest, context: grpc.aio.ServicerContext
    ) -> pb.SaveCheckpointResponse:
        path, version = await self._offload(lambda: self._shard.save(request.job_id))
        return pb.SaveCheckpointResponse(path=str(path), version=version)

    @grpc_errors
    async def LoadCheckpoint(
        self, request: pb.LoadCheckpointRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadCheckpointResponse:
        version = await self._offload(lambda: self._shard.load(request.job_id))
        return pb.LoadCheckpointResponse(version=version)

    @grpc_errors
    async def GetShardInfo(
        self, request: pb.GetShardInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetShardInfoResponse:
        infos = await self._offload(self._shard.info)
        return pb.GetShardInfoResponse(
            shard_index=self._shard.index,
            num_shards=self._shard.num_shards,
            variables=[
                pb.VariableInfo(
                    job_id=i.job_id,
                    name=i.spec.name,
                    dtype=tensor.dtype_code(i.spec.dtype),  # type: ignore[arg-type]
                    shape=list(i.spec.shape),
                    row_sharded=i.spec.row_sharded,
                    local_rows=i.local_rows,
                )
                for i in infos
            ],
        )
