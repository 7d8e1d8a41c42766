"""gRPC implementations of the core's ports (ingest, parameter-server shards,
coordinator), with bounded retries of UNAVAILABLE and domain errors for the rest.

Each client owns its channels; `close()` them when done. Safe to use from
one event loop (grpc.aio).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
import numpy as np
from mlmesh import records, tensor
from mlmesh.channels import aio_channel
from mlmesh.errors import (
    Unavailable,
)
from mlmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from mlmesh.logging import get_logger
from mlmesh.paramserver.v1 import paramserver_pb2, paramserver_pb2_grpc
from mlmesh.retry import Retry
from mlmesh.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from mlmesh.types.v1 import tensor_pb2

from trainer_svc import convert
from trainer_svc.core.types import (
    DatasetInfo,
    FeatureInfo,
    JobOptions,
    OptimizerConfig,
    PartitionInfo,
    PullResult,
    QueueInfo,
    ShardCheckpoint,
    ShardInfo,
    ShardJob,
    ShardVariable,
    TaskInfo,
    VariableSpec,
)
from trainer_svc.core.worker import Assignment

log = get_logger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class CallPolicy(Retry):
    """`mlmesh.retry.Retry`, and what the trainer's calls to the shards need besides."""

    # Tensors of at least this many bytes in one push travel as a stream of ~1 MiB chunks.
    stream_bytes: int = tensor.STREAM_BYTES
    # A worker's pull may wait at a SYNC barrier or staleness bound; a dead peer leaves it
    # within its lease (10 s by default), so this only bounds a wait that never ends.
    barrier_timeout: float = 120.0


_MODES = {
    "async": paramserver_pb2.CONSISTENCY_ASYNC,
    "sync": paramserver_pb2.CONSISTENCY_SYNC,
    "bounded": paramserver_pb2.CONSISTENCY_BOUNDED,
}
_MODE_NAMES = {v: k for k, v in _MODES.items()}
_SERVICE = paramserver_pb2.DESCRIPTOR.services_by_name["ParameterServerService"].full_name
_PUSH_STREAM, _PULL_STREAM = f"/{_SERVICE}/PushStream", f"/{_SERVICE}/PullStream"
_REGISTER_STREAM = f"/{_SERVICE}/RegisterVariablesStream"
_LAYOUTS = {"hash": paramserver_pb2.ROW_LAYOUT_HASH, "blocks": paramserver_pb2.ROW_LAYOUT_BLOCKS}
_LAYOUT_NAMES = {paramserver_pb2.ROW_LAYOUT_HASH: "hash", paramserver_pb2.ROW_LAYOUT_BLOCKS: "blocks"}


class IngestClient:
    def __init__(self, addr: str, policy: CallPolicy) -> None:
        self.policy = policy
        self._retired: list[grpc.aio.Channel] = []
        self._connect(addr)

    def _connect(self, addr: str) -> None:
        self.addr = addr
        self.channel = aio_channel(addr, self.policy.max_message_bytes)
        self.stub = ingest_pb2_grpc.IngestServiceStub(self.channel)
        # ReadPartition's messages are decoded by hand (`mlmesh.records`): columns are
        # views on the received bytes, not copies made by the generated parser.
        self._read_raw = self.channel.unary_stream(
            "/mlmesh.ingest.v1.IngestService/ReadPartition",
            request_serializer=ingest_pb2.ReadPartitionRequest.SerializeToString,
            response_deserializer=None,
        )

    def retarget(self, addr: str) -> None:
        """Send the next calls (retries included) to `addr`; calls in flight finish on the old
        channel, which is closed with the client (the registry moved ingest)."""
        if addr != self.addr:
            self._retired.append(self.channel)
            self._connect(addr)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in [*self._retired, self.channel]))

    async def get_dataset(self, name: str) -> DatasetInfo:
        resp = await self.policy.call(
            f"ingest GetDataset({name!r})",
            lambda: self.stub.GetDataset(
                ingest_pb2.GetDatasetRequest(name=name), timeout=self.policy.timeout
            ),
        )
        d = resp.dataset
        features = {
            f.name: FeatureInfo(
                tensor.numpy_dtype(f.dtype, f"feature {f.name!r}").name, tuple(int(x) for x in f.shape)
            )
            for f in d.schema.features
        }
        return DatasetInfo(d.name, features, d.num_records, d.num_partitions)

    async def list_partitions(self, dataset: str) -> list[PartitionInfo]:
        resp = await self.policy.call(
            f"ingest ListPartitions({dataset!r})",
            lambda: self.stub.ListPartitions(
                ingest_pb2.ListPartitionsRequest(dataset=dataset), timeout=self.policy.timeout
            ),
        )
        return [PartitionInfo(p.dataset, p.partition_id, p.num_records) for p in resp.partitions]

    async def read_partition(
        self, dataset: str, partition_id: int, num_records: int = -1
    ) -> dict[str, np.ndarray]:
        """Every record of the partition, column by column. With `num_records` known (a
        task says it), each batch is copied once into columns allocated up front."""

        async def read() -> dict[str, np.ndarray]:
            call = self._read_raw(
                ingest_pb2.ReadPartitionRequest(dataset=dataset, partition_id=partition_id),
                timeout=self.policy.stream_timeout,
            )
            return await records.gather(call, num_records, f"partition {partition_id} of {dataset!r}")

        return await self.policy.call(f"ingest ReadPartition({dataset!r}, {partition_id})", read)

    async def enqueue_epoch(
        self, job_id: str, dataset: str, epoch: int, seed: int, since_unix: float = 0.0
    ) -> QueueInfo:
        req = ingest_pb2.EnqueueEpochRequest(
            job_id=job_id, dataset=dataset, epoch=epoch, shuffle=True, seed=seed, since_unix=since_unix
        )
        resp = await self.policy.call(
            f"ingest EnqueueEpoch({job_id!r}, epoch {epoch})",
            lambda: self.stub.EnqueueEpoch(req, timeout=self.policy.timeout),
        )
        return _queue(resp.status)

    async def queue_status(self, job_id: str) -> QueueInfo:
        resp = await self.policy.call(
            f"ingest GetQueueStatus({job_id!r})",
            lambda: self.stub.GetQueueStatus(
                ingest_pb2.GetQueueStatusRequest(job_id=job_id), timeout=self.policy.timeout
            ),
        )
        return _queue(resp.status)

    async def lease_tasks(
        self,
        job_id: str,
        worker_id: str,
        lease_seconds: float,
        max_tasks: int = 1,
        complete: Sequence[str] = (),
    ) -> tuple[list[TaskInfo], QueueInfo]:
        req = ingest_pb2.LeaseTaskRequest(
            job_id=job_id,
            worker_id=worker_id,
            lease_seconds=lease_seconds,
            max_tasks=max_tasks,
            complete_lease_ids=complete,
        )
        resp = await self.policy.call(
            f"ingest LeaseTask({job_id!r})", lambda: self.stub.LeaseTask(req, timeout=self.policy.timeout)
        )
        tasks = [
            TaskInfo(
                t.task_id,
                t.job_id,
                t.dataset,
                t.partition_id,
                t.epoch,
                t.num_records,
                t.lease_id,
                t.lease_deadline_unix,
                t.attempt,
            )
            for t in resp.tasks
        ]
        return tasks, _queue(resp.status)

    async def extend_lease(self, lease_id: str, lease_seconds: float) -> float:
        req = ingest_pb2.ExtendLeaseRequest(lease_id=lease_id, lease_seconds=lease_seconds)
        resp = await self.policy.call(
            "ingest ExtendLease", lambda: self.stub.ExtendLease(req, timeout=self.policy.timeout)
        )
        return resp.lease_deadline_unix

    async def lease_state(self, lease_id: str) -> str:
        """ "active", "expired" or "completed"."""
        req = ingest_pb2.GetLeaseRequest(lease_id=lease_id)
        resp = await self.policy.call(
            "ingest GetLease", lambda: self.stub.GetLease(req, timeout=self.policy.timeout)
        )
        return ingest_pb2.LeaseState.Name(resp.state).removeprefix("LEASE_STATE_").lower()

    async def complete_task(self, lease_id: str) -> QueueInfo:
        req = ingest_pb2.CompleteTaskRequest(lease_id=lease_id)
        resp = await self.policy.call(
            "ingest CompleteTask", lambda: self.stub.CompleteTask(req, timeout=self.policy.timeout)
        )
        return _queue(resp.status)


def _queue(s: ingest_pb2.QueueStatus) -> QueueInfo:
    epochs = tuple((e.epoch, e.pending, e.leased, e.completed, e.total) for e in s.epochs)
    return QueueInfo(s.pending, s.leased, s.completed, s.total, s.done, epochs)


class ParamClient:
    """All shards of the parameter server, by shard index."""

    def __init__(self, addrs: Sequence[str], policy: CallPolicy) -> None:
        if not addrs:
            raise ValueError("at least one parameter-server address is needed")
        self.addrs = list(addrs)
        self.policy = policy
        self._retired: list[grpc.aio.Channel] = []
        self.channels: list[grpc.aio.Channel] = []
        self.stubs: list[paramserver_pb2_grpc.ParameterServerServiceStub] = []
        self._push_streams: list[grpc.aio.StreamUnaryMultiCallable] = []
        self._register_streams: list[grpc.aio.StreamUnaryMultiCallable] = []
        self._pull_streams: list[grpc.aio.UnaryStreamMultiCallable] = []
        for i, addr in enumerate(self.addrs):
            self._connect(i, addr)

    def _connect(self, shard: int, addr: str) -> None:
        """(Re)build shard `shard`'s channel and callables on `addr`."""
        c = aio_channel(addr, self.policy.max_message_bytes)
        # The chunked RPCs with our own framing of data chunks (tensor.data_frames / frame_data):
        # the same messages on the wire, two fewer copies of every byte.
        calls = (
            c,
            paramserver_pb2_grpc.ParameterServerServiceStub(c),
            c.stream_unary(_PUSH_STREAM, response_deserializer=paramserver_pb2.PushResponse.FromString),
            c.stream_unary(
                _REGISTER_STREAM, response_deserializer=paramserver_pb2.RegisterVariablesResponse.FromString
            ),
            c.unary_stream(_PULL_STREAM, request_serializer=paramserver_pb2.PullRequest.SerializeToString),
        )
        lists = (self.channels, self.stubs, self._push_streams, self._register_streams, self._pull_streams)
        for items, value in zip(lists, calls, strict=True):
            if shard < len(items):
                items[shard] = value
            else:
                items.append(value)

    @property
    def num_shards(self) -> int:
        return len(self.stubs)

    def retarget(self, addrs: Sequence[str]) -> None:
        """Send the next calls to each shard whose address changed (a shard restarted elsewhere).
        The shard count is fixed for the client's life: a different count is refused."""
        if len(addrs) != len(self.addrs):
            raise ValueError(f"{len(addrs)} shard addresses for a client of {len(self.addrs)} shards")
        for i, addr in enumerate(addrs):
            if addr != self.addrs[i]:
                self._retired.append(self.channels[i])
                self._connect(i, addr)
                self.addrs[i] = addr

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in [*self._retired, *self.channels]))

    async def register(
        self,
        shard: int,
        job_id: str,
        variables: Sequence[VariableSpec],
        optimizer: OptimizerConfig,
        options: JobOptions | None = None,
        stream: bool = False,
    ) -> None:
        """Create the variables on one shard (idempotent: existing ones keep their values).
        `stream`: send the initial values as chunks after the request (RegisterVariablesStream),
        for values too big for one message."""
        options = options or JobOptions()

        def value(v: VariableSpec) -> tensor_pb2.Tensor:
            return tensor.header(v.value) if stream else tensor.to_proto(v.value)

        req = paramserver_pb2.RegisterVariablesRequest(
            job_id=job_id,
            optimizer=convert.optimizer_to_proto(optimizer),
            config=paramserver_pb2.JobConfig(
                consistency=_MODES[options.consistency.mode],
                staleness=options.consistency.staleness,
                worker_lease_seconds=options.worker_lease_seconds,
                skip_nonfinite_pushes=options.skip_nonfinite,
                exactly_once=options.exactly_once,
            ),
            variables=[
                paramserver_pb2.VariableSpec(
                    name=v.name,
                    dtype=tensor.dtype_code(v.dtype),
                    shape=list(v.shape),
                    row_sharded=v.row_sharded,
                    row_layout=_LAYOUTS[v.layout]
                    if v.row_sharded
                    else paramserver_pb2.ROW_LAYOUT_UNSPECIFIED,
                    initializer=paramserver_pb2.Initializer(kind="value", value=value(v)),
                )
                for v in variables
            ],
        )
        if stream:

            def messages() -> Iterator[bytes]:
                yield paramserver_pb2.RegisterChunk(header=req).SerializeToString()
                yield from tensor.data_frames([v.value for v in variables])

            await self.policy.call(
                f"shard {shard} RegisterVariablesStream({job_id!r})",
                lambda: self._register_streams[shard](messages(), timeout=self.policy.timeout),
            )
            return
        await self.policy.call(
            f"shard {shard} RegisterVariables({job_id!r})",
            lambda: self.stubs[shard].RegisterVariables(req, timeout=self.policy.timeout),
        )

    async def join(self, shard: int, job_id: str, worker_id: str) -> int:
        """Enter the job's barrier on one shard; returns the clock to continue from."""
        req = paramserver_pb2.JoinJobRequest(job_id=job_id, worker_id=worker_id)
        resp = await self.policy.call(
            f"shard {shard} JoinJob({job_id!r})",
            lambda: self.stubs[shard].JoinJob(req, timeout=self.policy.timeout),
        )
        return int(resp.clock)

    async def leave(self, shard: int, job_id: str, worker_id: str) -> None:
        req = paramserver_pb2.LeaveJobRequest(job_id=job_id, worker_id=worker_id)
        await self.policy.call(
            f"shard {shard} LeaveJob({job_id!r})",
            lambda: self.stubs[shard].LeaveJob(req, timeout=self.policy.timeout),
        )

    async def pull(
        self,
        shard: int,
        job_id: str,
        dense: Sequence[str],
        rows: Mapping[str, np.ndarray],
        worker_id: str = "",
        clock: int = 0,
        pushed: int = 0,
        stream: bool = False,
    ) -> PullResult:
        """Values from one shard; a worker's pull (worker_id set) may wait for the
        consistency model, for as long as the barrier timeout allows. `stream` asks for the
        answer in ~1 MiB chunks (PullStream): the fast way for several MiB of values."""
        req = paramserver_pb2.PullRequest(
            job_id=job_id,
            dense=list(dense),
            rows=[paramserver_pb2.RowSlice(name=n, rows=r.tolist()) for n, r in rows.items()],
            worker_id=worker_id,
            clock=clock,
            pushed=pushed,
        )
        timeout = self.policy.barrier_timeout if worker_id else self.policy.timeout
        if stream:
            return await self.policy.call(
                f"shard {shard} PullStream({job_id!r})", lambda: self._pull_stream(shard, req, timeout)
            )
        resp = await self.policy.call(
            f"shard {shard} Pull({job_id!r})",
            lambda: self.stubs[shard].Pull(req, timeout=timeout),
        )
        return PullResult(
            dense=tensor.map_from_proto(resp.dense),
            rows={
                rs.name: (np.asarray(rs.rows, dtype=np.int64), tensor.from_proto(rs.values, rs.name))
                for rs in resp.rows
            },
            clock=int(resp.clock),
        )

    async def _pull_stream(self, shard: int, req: paramserver_pb2.PullRequest, timeout: float) -> PullResult:
        call = self._pull_streams[shard](req, timeout=timeout)
        head: paramserver_pb2.PullResponse | None = None
        assembler: tensor.Assembler | None = None
        names: list[str] = []
        async for message in call:
            data = tensor.frame_data(message)
            if data is None:
                chunk = paramserver_pb2.PullChunk.FromString(message)
                if chunk.HasField("header"):
                    head = chunk.header
                    names = sorted(head.dense)
                    headers = [(n, head.dense[n]) for n in names] + [(rs.name, rs.values) for rs in head.rows]
                    assembler = tensor.Assembler(headers, 1 << 40)
                data = memoryview(chunk.data)
            if data and assembler is not None:
                assembler.feed(data)
        if head is None or assembler is None:
            raise Unavailable(f"shard {shard} PullStream ended without an answer")
        arrays = assembler.finish()
        return PullResult(
            dense=dict(zip(names, arrays[: len(names)], strict=True)),
            rows={
                rs.name: (np.asarray(rs.rows, dtype=np.int64), values)
                for rs, values in zip(head.rows, arrays[len(names) :], strict=True)
            },
            clock=int(head.clock),
        )

    async def push(
        self,
        shard: int,
        job_id: str,
        worker_id: str,
        step: int,
        dense_grads: Mapping[str, np.ndarray],
        row_grads: Mapping[str, tuple[np.ndarray, np.ndarray]],
        lease: tuple[str, str] = ("", ""),
    ) -> bool:
        def req() -> paramserver_pb2.PushRequest:
            return paramserver_pb2.PushRequest(
                job_id=job_id,
                worker_id=worker_id,
                step=step,
                lease_id=lease[0],
                task_id=lease[1],
                dense_grads=tensor.map_to_proto(dense_grads),
                row_grads=[
                    paramserver_pb2.RowSlice(name=n, rows=r.tolist(), values=tensor.to_proto(v))
                    for n, (r, v) in row_grads.items()
                ],
            )

        # Retrying is safe: a shard applies each (job, worker, step) once.
        nbytes = sum(g.nbytes for g in dense_grads.values()) + sum(v.nbytes for _, v in row_grads.values())
        if nbytes >= self.policy.stream_bytes:
            resp = await self.policy.call(
                f"shard {shard} PushStream({job_id!r}, step {step})",
                lambda: self._push_stream(shard, job_id, worker_id, step, dense_grads, row_grads, lease),
            )
        else:
            resp = await self.policy.call(
                f"shard {shard} Push({job_id!r}, step {step})",
                lambda: self.stubs[shard].Push(req(), timeout=self.policy.timeout),
            )
        return resp.applied

    async def _push_stream(
        self,
        shard: int,
        job_id: str,
        worker_id: str,
        step: int,
        dense_grads: Mapping[str, np.ndarray],
        row_grads: Mapping[str, tuple[np.ndarray, np.ndarray]],
        lease: tuple[str, str] = ("", ""),
    ) -> paramserver_pb2.PushResponse:
        names = sorted(dense_grads)
        head = paramserver_pb2.PushRequest(
            job_id=job_id,
            worker_id=worker_id,
            step=step,
            lease_id=lease[0],
            task_id=lease[1],
            dense_grads={n: tensor.header(dense_grads[n]) for n in names},
            row_grads=[
                paramserver_pb2.RowSlice(name=n, rows=r.tolist(), values=tensor.header(v))
                for n, (r, v) in row_grads.items()
            ],
        )
        arrays = [dense_grads[n] for n in names] + [v for _, v in row_grads.values()]

        def messages() -> Iterator[bytes]:
            yield paramserver_pb2.PushChunk(header=head).SerializeToString()
            yield from tensor.data_frames(arrays)

        return await self._push_streams[shard](messages(), timeout=self.policy.timeout)  # type: ignore[no-any-return]

    async def commit_lease(self, shard: int, job_id: str, lease_id: str, task_id: str) -> int:
        """Exactly-once jobs: apply the lease's staged pushes on the shard; the count applied."""
        req = paramserver_pb2.CommitLeaseRequest(job_id=job_id, lease_id=lease_id, task_id=task_id)
        resp = await self.policy.call(
            f"shard {shard} CommitLease({task_id!r})",
            lambda: self.stubs[shard].CommitLease(req, timeout=self.policy.timeout),
        )
        return int(resp.applied_pushes)

    async def abort_lease(self, shard: int, job_id: str, lease_id: str) -> int:
        req = paramserver_pb2.AbortLeaseRequest(job_id=job_id, lease_id=lease_id)
        resp = await self.policy.call(
            f"shard {shard} AbortLease({lease_id!r})",
            lambda: self.stubs[shard].AbortLease(req, timeout=self.policy.timeout),
        )
        return int(resp.discarded_pushes)

    async def save_checkpoint(self, shard: int, job_id: str) -> None:
        req = paramserver_pb2.SaveCheckpointRequest(job_id=job_id)
        await self.policy.call(
            f"shard {shard} SaveCheckpoint({job_id!r})",
            lambda: self.stubs[shard].SaveCheckpoint(req, timeout=self.policy.timeout),
        )

    async def drop_job(self, shard: int, job_id: str, force: bool = False) -> bool:
        req = paramserver_pb2.DropJobRequest(job_id=job_id, force=force)
        resp = await self.policy.call(
            f"shard {shard} DropJob({job_id!r})",
            lambda: self.stubs[shard].DropJob(req, timeout=self.policy.timeout),
        )
        return bool(resp.dropped)

    async def shard_info(self, shard: int) -> ShardInfo:
        resp = await self.policy.call(
            f"shard {shard} GetShardInfo",
            lambda: self.stubs[shard].GetShardInfo(
                paramserver_pb2.GetShardInfoRequest(), timeout=self.policy.timeout
            ),
        )
        return ShardInfo(
            resp.shard_index,
            resp.num_shards,
            [
                ShardVariable(
                    v.job_id,
                    v.name,
                    tuple(int(d) for d in v.shape),
                    v.row_sharded,
                    _LAYOUT_NAMES.get(v.row_layout, "hash"),
                )
                for v in resp.variables
            ],
            {
                j.job_id: ShardJob(
                    _MODE_NAMES.get(j.config.consistency, "async"),
                    j.clock,
                    j.version,
                    j.lost_steps,
                    [ShardCheckpoint(c.path, c.version, c.clock) for c in j.checkpoints],
                    {st.lease_id: st.task_id for st in j.staged},
                    dict(j.applied_pushes_by_task),
                )
                for j in resp.jobs
            },
        )


class CoordinatorClient:
    """The worker's view of the coordinator. Calls are tried once: the worker
    keeps training through a coordinator outage and tries again later."""

    def __init__(self, addr: str, policy: CallPolicy) -> None:
        self.policy = dataclasses.replace(policy, retry_seconds=0.0)
        self._retired: list[grpc.aio.Channel] = []
        self._connect(addr)

    def _connect(self, addr: str) -> None:
        self.addr = addr
        self.channel = aio_channel(addr, self.policy.max_message_bytes)
        self.stub = trainer_pb2_grpc.TrainerServiceStub(self.channel)

    def retarget(self, addr: str) -> None:
        """Send the next calls to `addr` (the registry moved the coordinator)."""
        if addr != self.addr:
            self._retired.append(self.channel)
            self._connect(addr)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in [*self._retired, self.channel]))

    async def acquire_work(self, worker_id: str, device: str) -> Assignment | None:
        req = trainer_pb2.AcquireWorkRequest(worker_id=worker_id, device=device)
        resp = await self.policy.call(
            "coordinator AcquireWork", lambda: self.stub.AcquireWork(req, timeout=self.policy.timeout)
        )
        if not resp.has_work:
            return None
        return Assignment(
            resp.job_id, convert.spec_from_proto(resp.spec), resp.ingest_addr, tuple(resp.ps_addrs)
        )

    async def report_progress(
        self, job_id: str, worker_id: str, steps: int, examples: int, loss_sum: float
    ) -> str:
        req = trainer_pb2.ReportProgressRequest(
            job_id=job_id, worker_id=worker_id, steps=steps, examples=examples, loss_sum=loss_sum
        )
        resp = await self.policy.call(
            "coordinator ReportProgress", lambda: self.stub.ReportProgress(req, timeout=self.policy.timeout)
        )
        return convert.state_from_proto(resp.state)


class Connector:
    """Clients for the ingest and shard addresses a job names, reused while they stay the same.

    A worker following the registry pins the addresses it sees there (`pin_ingest`,
    `pin_shards`): they win over a job's (possibly older) ones, and a pin that changes
    retargets the clients in use, so the next call goes to the peer's new address."""

    def __init__(self, policy: CallPolicy) -> None:
        self.policy = policy
        self._key: tuple[str, tuple[str, ...]] | None = None
        self._clients: tuple[IngestClient, ParamClient] | None = None
        self._stale: list[IngestClient | ParamClient] = []
        self._ingest_pin: str | None = None
        self._shards_pin: tuple[str, ...] | None = None

    def pin_ingest(self, addrs: Sequence[str]) -> None:
        self._ingest_pin = addrs[0]
        if self._clients is not None and self._key is not None:
            self._clients[0].retarget(addrs[0])
            self._key = (addrs[0], self._key[1])

    def pin_shards(self, addrs: Sequence[str]) -> None:
        self._shards_pin = tuple(addrs)
        if self._clients is not None and self._key is not None and len(addrs) == len(self._key[1]):
            self._clients[1].retarget(addrs)
            self._key = (self._key[0], tuple(addrs))

    def connect(self, ingest_addr: str, ps_addrs: Sequence[str]) -> tuple[IngestClient, ParamClient]:
        ingest_addr = self._ingest_pin or ingest_addr
        if self._shards_pin is not None and len(self._shards_pin) == len(ps_addrs):
            ps_addrs = self._shards_pin
        key = (ingest_addr, tuple(ps_addrs))
        if self._clients is None or self._key != key:
            if self._clients is not None:
                self._stale.extend(self._clients)
            self._clients = (IngestClient(ingest_addr, self.policy), ParamClient(ps_addrs, self.policy))
            self._key = key
        return self._clients

    async def close(self) -> None:
        clients = [*self._stale, *(self._clients or ())]
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
