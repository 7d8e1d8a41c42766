"""IngestService over gRPC: validate, convert proto <-> domain, call the core.

Blocking work (SQLite, file I/O) runs in worker threads so one slow fsync
never stalls the event loop; the core is thread-safe.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

import grpc
from mlmesh import records
from mlmesh import tensor as codec
from mlmesh.errors import InvalidArgument, MlmeshError, Unavailable, grpc_errors
from mlmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from mlmesh.logging import get_logger
from mlmesh.server import add_service

from ingest_svc.core import metrics
from ingest_svc.core.append import AppendSession
from ingest_svc.core.catalog import DatasetInfo, PartitionInfo
from ingest_svc.core.files import CorruptPartition
from ingest_svc.core.ingest import IngestCore
from ingest_svc.core.queue import QueueStatus
from ingest_svc.core.schema import FeatureSpec, Schema

READ_BATCH_BYTES = 1024 * 1024
# Partitions of one Append stream written at once (CRC, copy and write release the GIL):
# at most WRITERS, and fewer for large partitions, so that the stream's buffered messages
# stay near WRITE_AHEAD_BYTES. Three 8 MiB partitions in flight moved 1.02-1.23x the MB/s of
# two (medians of four paired runs on 2 cores): a write waits on the device most of its ~8 ms.
WRITERS = 3
WRITE_AHEAD_BYTES = 64 * 1024 * 1024
# Room for framing around a ReadPartition batch's tensor bytes.
_MAX_MESSAGE_OVERHEAD = 64 * 1024

log = get_logger("ingest.servicer")


# -- conversions ---------------------------------------------------------------


def schema_from_proto(proto: ingest_pb2.DatasetSchema) -> Schema:
    """Convert and validate (InvalidArgument names the offending feature)."""
    features = []
    for f in proto.features:
        dtype = codec.numpy_dtype(f.dtype, f"feature {f.name!r}").name
        features.append(FeatureSpec(f.name, dtype, tuple(int(d) for d in f.shape)))
    return Schema.build(features)


def schema_to_proto(schema: Schema) -> ingest_pb2.DatasetSchema:
    return ingest_pb2.DatasetSchema(
        features=[
            ingest_pb2.FeatureSpec(name=f.name, dtype=codec.dtype_from_name(f.dtype), shape=list(f.shape))
            for f in schema.features
        ]
    )


def dataset_to_proto(d: DatasetInfo) -> ingest_pb2.Dataset:
    return ingest_pb2.Dataset(
        name=d.name,
        schema=schema_to_proto(d.schema),
        num_records=d.num_records,
        num_partitions=d.num_partitions,
        num_bytes=d.num_bytes,
        max_partition_bytes=d.max_partition_bytes,
        created_unix=d.created_unix,
    )


def partition_to_proto(p: PartitionInfo) -> ingest_pb2.Partition:
    return ingest_pb2.Partition(
        dataset=p.dataset,
        partition_id=p.partition_id,
        num_records=p.num_records,
        num_bytes=p.num_bytes,
        created_unix=p.created_unix,
    )


def status_to_proto(s: QueueStatus) -> ingest_pb2.QueueStatus:
    return ingest_pb2.QueueStatus(
        job_id=s.job_id,
        pending=s.pending,
        leased=s.leased,
        completed=s.completed,
        total=s.total,
        done=s.done,
        epochs=[
            ingest_pb2.EpochProgress(
                epoch=e.epoch, pending=e.pending, leased=e.leased, completed=e.completed, total=e.total
            )
            for e in s.epochs
        ],
    )


def _records_of(batch: dict[str, records.RawTensor], first: int) -> str:
    """'records 12..15' (0-based, inclusive) for a batch starting at record `first`."""
    counts = {t.shape[0] for t in batch.values() if len(t.shape)}
    if len(counts) == 1 and (n := counts.pop()) > 0:
        return f"records {first}..{first + n - 1}"
    return f"records from {first}"


def writers_for(partition_bytes: int) -> int:
    """Partitions of one Append stream written at once: WRITERS, fewer when they are large
    (1 from WRITE_AHEAD_BYTES up: a write then outlasts the receive of the next one)."""
    return max(1, min(WRITERS, WRITE_AHEAD_BYTES // max(partition_bytes, 1)))


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a background write's outcome as seen (the stream already failed for another reason)."""
    if not future.cancelled():
        future.exception()


_LEASE_STATES = {
    "active": ingest_pb2.LEASE_STATE_ACTIVE,
    "expired": ingest_pb2.LEASE_STATE_EXPIRED,
    "completed": ingest_pb2.LEASE_STATE_COMPLETED,
}


# -- the servicer --------------------------------------------------------------


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """Thin gRPC edge of IngestCore. Safe for any number of concurrent calls.

    Registered before the core is open (the server binds first, then recovers
    the data dir); until `attach` every call is UNAVAILABLE.
    """

    def __init__(self, max_message_bytes: int, core: IngestCore | None = None) -> None:
        self._core_or_none = core
        self._max_message_bytes = max_message_bytes

    def _message_budget(self) -> int:
        """Record bytes that fit in one message under the size limit."""
        return self._max_message_bytes - min(_MAX_MESSAGE_OVERHEAD, self._max_message_bytes // 16)

    def attach(self, core: IngestCore) -> None:
        self._core_or_none = core

    @property
    def _core(self) -> IngestCore:
        if self._core_or_none is None:
            raise Unavailable("ingest is starting (recovering its data dir); retry shortly")
        return self._core_or_none

    @grpc_errors
    async def CreateDataset(
        self, request: ingest_pb2.CreateDatasetRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.CreateDatasetResponse:
        schema = schema_from_proto(request.schema)
        dataset, created = await asyncio.to_thread(
            self._core.catalog.create_dataset, request.name, schema, request.max_partition_bytes
        )
        return ingest_pb2.CreateDatasetResponse(dataset=dataset_to_proto(dataset), created=created)

    @grpc_errors
    async def GetDataset(
        self, request: ingest_pb2.GetDatasetRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.GetDatasetResponse:
        dataset = await asyncio.to_thread(self._core.catalog.get_dataset, request.name)
        return ingest_pb2.GetDatasetResponse(dataset=dataset_to_proto(dataset))

    @grpc_errors
    async def ListDatasets(
        self, request: ingest_pb2.ListDatasetsRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.ListDatasetsResponse:
        datasets = await asyncio.to_thread(self._core.catalog.list_datasets)
        return ingest_pb2.ListDatasetsResponse(datasets=[dataset_to_proto(d) for d in datasets])

    @grpc_errors
    async def Append(  # type: ignore[override]
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> ingest_pb2.AppendResponse:
        """Registered with a raw deserializer (`add_to_server`): each AppendRequest is read in
        place (`records.parse_append`), so its columns view the received bytes until their
        partition is written from them. Full partitions are written in worker threads while
        the next messages arrive, at most `writers_for` at once, so memory stays bounded by
        about that many partitions plus one."""
        session: AppendSession | None = None
        on_commit = None
        writing: deque[asyncio.Future[None]] = deque()
        reason = "error"
        try:
            index = 0
            async for message in request_iterator:
                try:
                    request = records.parse_append(message)
                except InvalidArgument as e:
                    raise InvalidArgument(
                        f"Append message {index}: {e.message}; nothing of this stream was kept"
                    ) from None
                if session is None:
                    if not request.dataset:
                        raise InvalidArgument("the first Append message must name the dataset")
                    session = await asyncio.to_thread(self._core.open_append, request.dataset)
                    if request.complete_lease_id:  # a task's output: commit and complete as one
                        on_commit = await asyncio.to_thread(
                            self._core.queue.output_commit, request.complete_lease_id
                        )
                elif request.complete_lease_id:
                    raise InvalidArgument(f"Append message {index}: only the first may set complete_lease_id")
                elif request.dataset and request.dataset != session.dataset.name:
                    raise InvalidArgument(
                        f"Append message {index} names dataset {request.dataset!r} but the stream "
                        f"appends to {session.dataset.name!r}"
                    )
                if request.batch:
                    try:
                        full = session.add(
                            {
                                n: codec.from_parts(t.dtype, t.shape, t.content, n)
                                for n, t in request.batch.items()
                            }
                        )
                    except InvalidArgument as e:
                        # Tensors are whole columns, so a bad one is located by its batch.
                        raise InvalidArgument(
                            f"Append message {index}, {_records_of(request.batch, session.records)} "
                            f"of the stream: {e.message}; nothing of this stream was kept"
                        ) from None
                    if full:
                        if len(writing) >= writers_for(session.dataset.max_partition_bytes):
                            await writing.popleft()  # a write's error, if any, ends the stream here
                        writing.append(asyncio.ensure_future(asyncio.to_thread(session.flush)))
                index += 1
            if session is None:
                raise InvalidArgument("the Append stream was empty; the first message must name the dataset")
            while writing:
                await writing.popleft()
            if context.cancelled():
                # A cancelled call can end the request stream like a clean half-close would.
                raise asyncio.CancelledError
            parts = await asyncio.to_thread(session.finish, on_commit)
            reason = ""
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        except Exception as e:
            reason = "rejected" if isinstance(e, MlmeshError) else "error"
            # Let the writes in flight end first, so that no file of the stream outlives the answer.
            await asyncio.gather(*writing, return_exceptions=True)
            raise
        finally:
            if reason:
                metrics.APPEND_FAILURES.labels(reason).inc()
                for write in writing:
                    # Cancelled: its thread may still run; abort() below removes what it writes.
                    write.add_done_callback(_retrieve)
                if session is not None:
                    # Synchronous on purpose: a cancelled task must not await here.
                    session.abort()
                    log.info("append aborted", dataset=session.dataset.name, reason=reason)
        log.info(
            "append committed", dataset=session.dataset.name, records=session.records, partitions=len(parts)
        )
        response = ingest_pb2.AppendResponse(
            dataset=session.dataset.name,
            records_appended=session.records,
            partitions=[partition_to_proto(p) for p in parts],
        )
        if session.committed_with is not None:
            response.status.CopyFrom(status_to_proto(session.committed_with))
        return response

    @grpc_errors
    async def ListPartitions(
        self, request: ingest_pb2.ListPartitionsRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.ListPartitionsResponse:
        parts = await asyncio.to_thread(self._core.catalog.list_partitions, request.dataset)
        return ingest_pb2.ListPartitionsResponse(partitions=[partition_to_proto(p) for p in parts])

    @grpc_errors
    async def ReadPartition(
        self, request: ingest_pb2.ReadPartitionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Streams serialized ReadPartitionResponse messages (registered with a raw-bytes
        serializer, `add_to_server`): each batch's columns are copied once, from the mapped
        file into the message, after their checksums are verified."""
        if request.batch_size < 0:
            raise InvalidArgument(f"batch_size is {request.batch_size}; expected 0 (about 1 MiB) or more")
        try:
            catalog = self._core.catalog
            # A partition still mapped is served without a hop to a worker thread.
            data = catalog.mapped_partition(request.dataset, request.partition_id)
            if data is None:
                data = await asyncio.to_thread(catalog.load_partition, request.dataset, request.partition_id)
        except CorruptPartition as e:
            await self._data_loss(context, request, e)
            return
        record_bytes = max(data.schema.record_bytes, 1)
        fits = max(1, self._message_budget() // record_bytes)  # records per message the limit allows
        if request.batch_size == 0:
            size = min(fits, max(1, READ_BATCH_BYTES // record_bytes))
        elif (largest := min(request.batch_size, data.num_records)) > fits:
            raise InvalidArgument(
                f"batch_size {request.batch_size} makes messages of about "
                f"{largest * record_bytes} bytes ({record_bytes} per record), "
                f"over the {self._max_message_bytes}-byte message limit; use at most {fits}"
            )
        else:
            size = request.batch_size
        features = [(f.name, codec.dtype_from_name(f.dtype), f.shape) for f in data.schema.features]
        for start in range(0, data.num_records, size):
            stop = min(start + size, data.num_records)
            try:
                data.verify(start, stop)
            except CorruptPartition as e:
                await self._data_loss(context, request, e)
                return
            yield records.encode(
                [
                    (name, dtype, (stop - start, *shape), data.column_bytes(name, start, stop))
                    for name, dtype, shape in features
                ]
            )

    async def _data_loss(
        self, context: grpc.aio.ServicerContext, request: ingest_pb2.ReadPartitionRequest, e: CorruptPartition
    ) -> None:
        metrics.CORRUPT_READS.inc()
        log.error(
            "corrupt partition", dataset=request.dataset, partition_id=request.partition_id, error=str(e)
        )
        await context.abort(grpc.StatusCode.DATA_LOSS, str(e))

    @grpc_errors
    async def EnqueueEpoch(
        self, request: ingest_pb2.EnqueueEpochRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.EnqueueEpochResponse:
        n, status = await asyncio.to_thread(
            self._core.queue.enqueue_epoch,
            request.job_id,
            request.dataset,
            request.epoch,
            request.shuffle,
            request.seed,
            request.since_unix,
            request.from_partition_id,
            request.to_partition_id,
        )
        return ingest_pb2.EnqueueEpochResponse(tasks_enqueued=n, status=status_to_proto(status))

    @grpc_errors
    async def LeaseTask(
        self, request: ingest_pb2.LeaseTaskRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.LeaseTaskResponse:
        tasks, status = await asyncio.to_thread(
            self._core.queue.lease,
            request.job_id,
            request.worker_id,
            request.lease_seconds,
            request.max_tasks,
            list(request.complete_lease_ids),
        )
        return ingest_pb2.LeaseTaskResponse(
            tasks=[
                ingest_pb2.Task(
                    task_id=t.task_id,
                    job_id=t.job_id,
                    dataset=t.dataset,
                    partition_id=t.partition_id,
                    epoch=t.epoch,
                    num_records=t.num_records,
                    lease_id=t.lease_id,
                    lease_deadline_unix=t.lease_deadline_unix,
                    attempt=t.attempt,
                )
                for t in tasks
            ],
            status=status_to_proto(status),
        )

    @grpc_errors
    async def ExtendLease(
        self, request: ingest_pb2.ExtendLeaseRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.ExtendLeaseResponse:
        deadline = await asyncio.to_thread(self._core.queue.extend, request.lease_id, request.lease_seconds)
        return ingest_pb2.ExtendLeaseResponse(lease_deadline_unix=deadline)

    @grpc_errors
    async def CompleteTask(
        self, request: ingest_pb2.CompleteTaskRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.CompleteTaskResponse:
        status = await asyncio.to_thread(self._core.queue.complete, request.lease_id)
        return ingest_pb2.CompleteTaskResponse(status=status_to_proto(status))

    @grpc_errors
    async def GetLease(
        self, request: ingest_pb2.GetLeaseRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.GetLeaseResponse:
        info = await asyncio.to_thread(self._core.queue.get_lease, request.lease_id)
        return ingest_pb2.GetLeaseResponse(
            lease_id=info.lease_id,
            state=_LEASE_STATES[info.state],
            task_id=info.task_id,
            worker_id=info.worker_id,
            deadline_unix=info.deadline_unix,
        )

    @grpc_errors
    async def GetQueueStatus(
        self, request: ingest_pb2.GetQueueStatusRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.GetQueueStatusResponse:
        status = await asyncio.to_thread(self._core.queue.status, request.job_id)
        return ingest_pb2.GetQueueStatusResponse(status=status_to_proto(status))


SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name


def add_to_server(servicer: IngestServicer, server: grpc.aio.Server) -> None:
    """Register the service; ReadPartition gives and Append takes raw bytes (their messages
    framed by `mlmesh.records`: the same messages on the wire, fewer copies of every column),
    every other method goes through the generated handlers."""
    add_service(
        server,
        SERVICE_NAME,
        ingest_pb2_grpc.add_IngestServiceServicer_to_server,
        servicer,
        {
            "ReadPartition": grpc.unary_stream_rpc_method_handler(
                servicer.ReadPartition, request_deserializer=ingest_pb2.ReadPartitionRequest.FromString
            ),
            "Append": grpc.stream_unary_rpc_method_handler(
                servicer.Append, response_serializer=ingest_pb2.AppendResponse.SerializeToString
            ),
        },
    )
