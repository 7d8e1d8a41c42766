"""ParameterServerService: proto <-> domain, and the waiting of pulls.

Each RPC decodes its request, calls the shard in a thread pool (NumPy work
and the job locks must not block the event loop) and encodes the answer.
Domain errors become gRPC statuses through `mlmesh.errors.grpc_errors`.

A pull the consistency model holds back (SYNC barrier, staleness bound) waits
here, on the event loop, costing no thread: the shard reports every change
that may release it (`Shard.listeners`), and a timer re-asks anyway so that
an expired lease is noticed. The client's deadline bounds the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from functools import partial
from typing import TypeVar

import grpc
import numpy as np
from mlmesh import keys, tensor, wire
from mlmesh.errors import InvalidArgument, grpc_errors
from mlmesh.paramserver.v1 import paramserver_pb2 as pb
from mlmesh.paramserver.v1 import paramserver_pb2_grpc
from mlmesh.types.v1 import tensor_pb2

from paramserver_svc.core import metrics
from paramserver_svc.core.shard import PullResult, RowValues, Shard
from paramserver_svc.core.specs import InitSpec, JobConfig, Mode, OptimizerConfig, VarSpec
from paramserver_svc.core.streamed_push import StreamedPush

T = TypeVar("T")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ParameterServerService"].full_name
_NO_HEADER = "the first PushStream message must carry the header (job, step, tensors)"
_NO_REGISTER_HEADER = "the first RegisterVariablesStream message must carry the header (job, variables)"
# How often a waiting pull asks again without being woken (how soon a lease expiry is seen).
RECHECK_SECONDS = 0.25

_LAYOUTS = {
    pb.ROW_LAYOUT_UNSPECIFIED: keys.RowLayout.HASH,
    pb.ROW_LAYOUT_HASH: keys.RowLayout.HASH,
    pb.ROW_LAYOUT_BLOCKS: keys.RowLayout.BLOCKS,
}
_LAYOUT_TO_PB = {keys.RowLayout.HASH: pb.ROW_LAYOUT_HASH, keys.RowLayout.BLOCKS: pb.ROW_LAYOUT_BLOCKS}
_MODES = {
    pb.CONSISTENCY_UNSPECIFIED: Mode.ASYNC,
    pb.CONSISTENCY_ASYNC: Mode.ASYNC,
    pb.CONSISTENCY_SYNC: Mode.SYNC,
    pb.CONSISTENCY_BOUNDED: Mode.BOUNDED,
}
_MODE_TO_PB = {
    Mode.ASYNC: pb.CONSISTENCY_ASYNC,
    Mode.SYNC: pb.CONSISTENCY_SYNC,
    Mode.BOUNDED: pb.CONSISTENCY_BOUNDED,
}


def _rows(ids: object) -> np.ndarray:
    return np.array(ids, dtype=np.int64)


def _fill(out: tensor_pb2.Tensor, array: np.ndarray) -> None:
    """Encode in place into a message field (maps and repeated fields cannot be assigned)."""
    out.dtype = tensor.dtype_code(array.dtype)  # type: ignore[assignment]
    out.shape.extend(array.shape)
    out.content = np.ascontiguousarray(array).tobytes()


def _var_spec(v: pb.VariableSpec, with_value: bool = True) -> tuple[VarSpec, InitSpec]:
    dtype = tensor.numpy_dtype(v.dtype, f"variable {v.name!r}")
    layout = _LAYOUTS.get(v.row_layout)
    if layout is None:
        raise InvalidArgument(f"variable {v.name!r} has unknown row_layout {v.row_layout}")
    if not v.row_sharded:
        layout = keys.RowLayout.HASH  # meaningless for a dense variable: one canonical spec
    spec = VarSpec(v.name, dtype, tuple(int(d) for d in v.shape), v.row_sharded, layout)
    ini = v.initializer
    value = None
    if with_value and ini.HasField("value"):
        value = tensor.from_proto(ini.value, f"initial value of {v.name!r}")
    return spec, InitSpec(ini.kind or "zeros", ini.scale, ini.seed, value)


def _optimizer(request: pb.RegisterVariablesRequest) -> OptimizerConfig | None:
    if not request.HasField("optimizer"):
        return None
    o = request.optimizer
    return OptimizerConfig.parse(
        o.kind, o.learning_rate, o.beta_1, o.beta_2, o.epsilon, o.momentum, o.nesterov
    )


def _job_config(request: pb.RegisterVariablesRequest) -> JobConfig | None:
    if not request.HasField("config"):
        return None
    c = request.config
    mode = _MODES.get(c.consistency)
    if mode is None:
        raise InvalidArgument(f"config.consistency {c.consistency} is not a known ConsistencyMode")
    return JobConfig.parse(mode, c.staleness, c.worker_lease_seconds, c.skip_nonfinite_pushes, c.exactly_once)


def config_to_proto(c: JobConfig) -> pb.JobConfig:
    return pb.JobConfig(
        consistency=_MODE_TO_PB[c.mode],
        staleness=c.staleness,
        worker_lease_seconds=c.worker_lease_seconds,
        skip_nonfinite_pushes=c.skip_nonfinite,
        exactly_once=c.exactly_once,
    )


def optimizer_to_proto(o: OptimizerConfig) -> pb.OptimizerSpec:
    return pb.OptimizerSpec(
        kind=o.kind,
        learning_rate=o.learning_rate,
        beta_1=o.beta_1,
        beta_2=o.beta_2,
        epsilon=o.epsilon,
        momentum=o.momentum,
        nesterov=o.nesterov,
    )


def _feed_values(sink: tensor.Assembler, data: memoryview) -> None:
    """Feed a RegisterVariablesStream chunk; too many bytes names the last variable."""
    if sink.filled + len(data) > sink.total:
        entries = sink.layout.entries
        last = f"the last streamed one is {entries[-1][0]!r}" if entries else "none is streamed"
        raise InvalidArgument(
            f"the stream carried more bytes ({sink.filled + len(data)}) than its variables' initial "
            f"values need ({sink.total}; {last})"
        )
    sink.feed(data)


def _finish_values(sink: tensor.Assembler) -> list[np.ndarray]:
    """The streamed initial values; a stream that ended short names the variable it cut."""
    if sink.filled < sink.total:
        for name, dt, shape, offset in sink.layout.entries:
            need = dt.itemsize * int(np.prod(shape, dtype=np.int64))
            if sink.filled < offset + need:
                got = max(0, sink.filled - offset)
                raise InvalidArgument(
                    f"the stream ended inside the initial value of variable {name!r}: "
                    f"{got} of the {need} bytes that {tensor.describe(tensor.dtype_code(dt), shape)} needs"
                )
    return sink.finish()


def _encode_pull(result: PullResult) -> pb.PullResponse:
    resp = pb.PullResponse(version=result.version, clock=result.clock)
    for name, array in result.dense.items():
        _fill(resp.dense[name], array)
    for rv in result.rows:
        out = resp.rows.add(name=rv.name, rows=rv.rows.tolist())
        assert rv.values is not None
        _fill(out.values, rv.values)
    return resp


class _Changes:
    """One asyncio.Event per job, set (and replaced) whenever the shard reports a change.

    Waiters take the current event *before* asking the shard, so a change that
    lands between their question and their wait still wakes them.
    """

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def event(self, job_id: str) -> asyncio.Event:
        ev = self._events.get(job_id)
        if ev is None:
            ev = self._events[job_id] = asyncio.Event()
        return ev

    def notify(self, job_id: str) -> None:
        ev = self._events.pop(job_id, None)
        if ev is not None:
            ev.set()


class ParameterServerServicer(paramserver_pb2_grpc.ParameterServerServiceServicer):
    """Thin adapter over one `Shard`. Safe for concurrent calls (the shard is)."""

    def __init__(self, shard: Shard, executor: Executor, max_stream_bytes: int = 1 << 30) -> None:
        """Build on the event loop that will serve the calls. A PushStream whose tensors need
        more than `max_stream_bytes` is RESOURCE_EXHAUSTED."""
        self._shard = shard
        self._executor = executor
        self._max_stream_bytes = max_stream_bytes
        self._changes = _Changes()
        self._loop = asyncio.get_running_loop()
        shard.listeners.append(self._on_change)

    def _on_change(self, job_id: str) -> None:
        """Called from any thread by the shard."""
        self._loop.call_soon_threadsafe(self._changes.notify, job_id)

    async def _offload(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    @grpc_errors
    async def RegisterVariables(
        self, request: pb.RegisterVariablesRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterVariablesResponse:
        def run() -> pb.RegisterVariablesResponse:
            specs = [_var_spec(v) for v in request.variables]
            created, existing = self._shard.register(
                request.job_id, specs, _optimizer(request), _job_config(request)
            )
            return pb.RegisterVariablesResponse(created=created, existing=existing)

        return await self._offload(run)

    @grpc_errors
    async def RegisterVariablesStream(  # type: ignore[override]
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> pb.RegisterVariablesResponse:
        # Registered with a raw deserializer (`add_to_server`), like PushStream. The values are
        # assembled in one buffer and registered only once the stream ended whole: a broken
        # stream (cancelled, short, too long) creates nothing.
        head: pb.RegisterVariablesRequest | None = None
        sink: tensor.Assembler | None = None
        streamed: list[int] = []  # indices of the header's variables whose values are chunked
        index = -1  # which message of the stream, for errors
        async for message in request_iterator:
            index += 1
            data = tensor.frame_data(message)
            if data is None:
                chunk = wire.parse(pb.RegisterChunk, message, f"RegisterVariablesStream message {index}")
                if chunk.HasField("header"):
                    if head is not None:
                        raise InvalidArgument(
                            "only the first RegisterVariablesStream message may carry a header"
                        )
                    head = chunk.header
                    streamed = [i for i, v in enumerate(head.variables) if v.initializer.kind == "value"]
                    for i in streamed:
                        if not head.variables[i].initializer.HasField("value"):
                            raise InvalidArgument(
                                f"variable {head.variables[i].name!r} has initializer 'value' but the "
                                "stream header gives no value tensor (its dtype and shape)"
                            )
                    headers = [
                        (head.variables[i].name, head.variables[i].initializer.value) for i in streamed
                    ]
                    sink = tensor.Assembler(tensor.StreamLayout(headers, self._max_stream_bytes))
                data = memoryview(chunk.data) if chunk.data else None
            if data is not None:
                if sink is None:
                    raise InvalidArgument(_NO_REGISTER_HEADER)
                _feed_values(sink, data)
        if head is None or sink is None:
            raise InvalidArgument(_NO_REGISTER_HEADER)
        request, arrays = head, _finish_values(sink)

        def run() -> pb.RegisterVariablesResponse:
            specs = []
            values = dict(zip(streamed, arrays, strict=True))
            for i, v in enumerate(request.variables):
                spec, init = _var_spec(v, with_value=False)
                if i in values:
                    init = InitSpec(init.kind, init.scale, init.seed, values[i])
                specs.append((spec, init))
            created, existing = self._shard.register(
                request.job_id, specs, _optimizer(request), _job_config(request)
            )
            return pb.RegisterVariablesResponse(created=created, existing=existing)

        return await self._offload(run)

    @grpc_errors
    async def JoinJob(
        self, request: pb.JoinJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.JoinJobResponse:
        clock, config = await self._offload(lambda: self._shard.join(request.job_id, request.worker_id))
        return pb.JoinJobResponse(clock=clock, config=config_to_proto(config))

    @grpc_errors
    async def LeaveJob(
        self, request: pb.LeaveJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.LeaveJobResponse:
        await self._offload(lambda: self._shard.leave(request.job_id, request.worker_id))
        return pb.LeaveJobResponse()

    async def _wait_pull(self, request: pb.PullRequest, build: Callable[[PullResult], T]) -> T:
        """Pull as the job's consistency model allows, waiting (on the loop) while it says no;
        `build` turns the values into the answer, in the same thread hop."""
        rows = [RowValues(rs.name, _rows(rs.rows)) for rs in request.rows]
        dense = list(request.dense)

        def run() -> tuple[T] | None:
            result = self._shard.pull(
                request.job_id, dense, rows, request.worker_id, request.clock, request.pushed
            )
            return None if result is None else (build(result),)

        waited_since = None
        while True:
            changed = self._changes.event(request.job_id)
            answer = await self._offload(run)
            if answer is not None:
                break
            if waited_since is None:
                waited_since = time.perf_counter()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), RECHECK_SECONDS)
        if waited_since is not None:
            metrics.PULL_WAIT_SECONDS.observe(time.perf_counter() - waited_since)
        return answer[0]

    @grpc_errors
    async def Pull(self, request: pb.PullRequest, context: grpc.aio.ServicerContext) -> pb.PullResponse:
        return await self._wait_pull(request, _encode_pull)

    @grpc_errors
    async def PullStream(  # type: ignore[override]
        self, request: pb.PullRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        def build(result: PullResult) -> tuple[pb.PullResponse, list[np.ndarray]]:
            head = pb.PullResponse(version=result.version, clock=result.clock)
            names = sorted(result.dense)
            for name in names:
                head.dense[name].CopyFrom(tensor.header(result.dense[name]))
            for rv in result.rows:
                assert rv.values is not None
                head.rows.add(name=rv.name, rows=rv.rows.tolist()).values.CopyFrom(tensor.header(rv.values))
            return head, [result.dense[n] for n in names] + [rv.values for rv in result.rows]  # type: ignore[misc]

        head, arrays = await self._wait_pull(request, build)
        # Registered with a raw serializer (`add_to_server`): we write the messages' bytes.
        yield pb.PullChunk(header=head).SerializeToString()
        for frame in tensor.data_frames(arrays):
            yield frame

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
            return self._push(request, dense, rows)

        return await self._offload(run)

    @grpc_errors
    async def PushStream(  # type: ignore[override]
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> pb.PushResponse:
        # Registered with a raw deserializer (`add_to_server`): a plain data chunk is read in
        # place (a view on the received bytes); anything else is parsed as a PushChunk.
        # A dense push the shard can take as it arrives goes chunk by chunk into a
        # `StreamedPush` (the arithmetic overlaps the transfer; it runs here, on the loop, a
        # chunk at a time); any other is assembled into one buffer and pushed at the end.
        head: pb.PushRequest | None = None
        sink: tensor.Assembler | StreamedPush | None = None
        names: list[str] = []
        index = -1  # which message of the stream, for errors
        async for message in request_iterator:
            index += 1
            data = tensor.frame_data(message)
            if data is not None:
                if sink is None:
                    raise InvalidArgument(_NO_HEADER)
                sink.feed(data)
                continue
            chunk = wire.parse(pb.PushChunk, message, f"PushStream message {index}")
            if head is None:
                if not chunk.HasField("header"):
                    raise InvalidArgument(_NO_HEADER)
                head = chunk.header
                names = sorted(head.dense_grads)
                headers = [(n, head.dense_grads[n]) for n in names]
                for rs in head.row_grads:
                    if not rs.HasField("values"):
                        raise InvalidArgument(
                            f"row gradient {rs.name!r} in the PushStream header has no values header"
                        )
                    headers.append((f"{rs.name} rows", rs.values))
                layout = tensor.StreamLayout(headers, self._max_stream_bytes)
                if not head.row_grads:
                    sink = await self._offload(partial(self._open_streamed, head, layout))
                if sink is None:
                    sink = tensor.Assembler(layout)
            elif chunk.HasField("header"):
                raise InvalidArgument("only the first PushStream message may carry a header")
            if chunk.data:
                assert sink is not None
                sink.feed(memoryview(chunk.data))
        if head is None or sink is None:
            raise InvalidArgument("PushStream carried no message")
        if isinstance(sink, StreamedPush):
            streamed = sink
            result = await self._offload(lambda: self._shard.finish_streamed_push(streamed))
            return pb.PushResponse(applied=result.applied, version=result.version)
        request, arrays = head, sink.finish()

        def run() -> pb.PushResponse:
            dense = dict(zip(names, arrays[: len(names)], strict=True))
            rows = [
                RowValues(rs.name, _rows(rs.rows), values)
                for rs, values in zip(request.row_grads, arrays[len(names) :], strict=True)
            ]
            return self._push(request, dense, rows)

        return await self._offload(run)

    def _open_streamed(self, head: pb.PushRequest, layout: tensor.StreamLayout) -> StreamedPush | None:
        return self._shard.open_streamed_push(
            head.job_id, head.worker_id, head.step, layout, head.lease_id, head.task_id
        )

    def _push(
        self, request: pb.PushRequest, dense: dict[str, np.ndarray], rows: list[RowValues]
    ) -> pb.PushResponse:
        result = self._shard.push(
            request.job_id, request.worker_id, request.step, dense, rows, request.lease_id, request.task_id
        )
        return pb.PushResponse(applied=result.applied, version=result.version)

    @grpc_errors
    async def CommitLease(
        self, request: pb.CommitLeaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.CommitLeaseResponse:
        applied, already, version = await self._offload(
            lambda: self._shard.commit_lease(request.job_id, request.lease_id, request.task_id)
        )
        return pb.CommitLeaseResponse(applied_pushes=applied, already_committed=already, version=version)

    @grpc_errors
    async def AbortLease(
        self, request: pb.AbortLeaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.AbortLeaseResponse:
        n = await self._offload(lambda: self._shard.abort_lease(request.job_id, request.lease_id))
        return pb.AbortLeaseResponse(discarded_pushes=n)

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
    async def DropJob(
        self, request: pb.DropJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.DropJobResponse:
        r = await self._offload(lambda: self._shard.drop(request.job_id, request.force))
        return pb.DropJobResponse(
            dropped=r.dropped,
            already_dropped=r.already,
            checkpoint_path=str(r.checkpoint) if r.checkpoint is not None else "",
            version=r.version,
        )

    @grpc_errors
    async def GetShardInfo(
        self, request: pb.GetShardInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetShardInfoResponse:
        infos = await self._offload(self._shard.info)
        jobs = await self._offload(self._shard.jobs_info)
        return pb.GetShardInfoResponse(
            jobs=[
                pb.JobInfo(
                    job_id=j.job_id,
                    config=config_to_proto(j.config),
                    optimizer=optimizer_to_proto(j.optimizer),
                    clock=j.clock,
                    version=j.version,
                    workers=j.workers,
                    lost_steps=j.lost_steps,
                    checkpoints=[
                        pb.CheckpointInfo(path=str(c.path), version=c.version, clock=c.clock)
                        for c in j.checkpoints
                    ],
                    staged=[
                        pb.StagedLease(
                            lease_id=st.lease_id,
                            task_id=st.task_id,
                            worker_id=st.worker_id,
                            pushes=st.pushes,
                            bytes=st.nbytes,
                            age_seconds=st.age_seconds,
                        )
                        for st in j.staged
                    ],
                    applied_pushes_by_task=j.applied_by_task,
                    leases_committed=j.leases_committed,
                    leases_aborted=j.leases_aborted,
                )
                for j in jobs
            ],
            shard_index=self._shard.index,
            num_shards=self._shard.num_shards,
            dropped_jobs=self._shard.dropped_jobs(),
            variables=[
                pb.VariableInfo(
                    job_id=i.job_id,
                    name=i.spec.name,
                    dtype=tensor.dtype_code(i.spec.dtype),  # type: ignore[arg-type]
                    shape=list(i.spec.shape),
                    row_sharded=i.spec.row_sharded,
                    local_rows=i.local_rows,
                    row_layout=_LAYOUT_TO_PB[i.spec.layout]
                    if i.spec.row_sharded
                    else pb.ROW_LAYOUT_UNSPECIFIED,
                )
                for i in infos
            ],
        )


class _Capture:
    """Stands in for a server to collect the generated method handlers."""

    handlers: dict[str, grpc.RpcMethodHandler]

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(self, name: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.handlers = dict(handlers)


def add_to_server(servicer: ParameterServerServicer, server: grpc.aio.Server) -> None:
    """Register the service: the generated handlers, except the three streams, which
    take and give raw bytes so that data chunks are framed with `mlmesh.tensor` (the same
    messages on the wire, two fewer copies of every byte on the shard)."""
    capture = _Capture()
    paramserver_pb2_grpc.add_ParameterServerServiceServicer_to_server(servicer, capture)
    handlers = capture.handlers
    handlers["PullStream"] = grpc.unary_stream_rpc_method_handler(
        servicer.PullStream, request_deserializer=pb.PullRequest.FromString
    )
    handlers["PushStream"] = grpc.stream_unary_rpc_method_handler(
        servicer.PushStream, response_serializer=pb.PushResponse.SerializeToString
    )
    handlers["RegisterVariablesStream"] = grpc.stream_unary_rpc_method_handler(
        servicer.RegisterVariablesStream,
        response_serializer=pb.RegisterVariablesResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
