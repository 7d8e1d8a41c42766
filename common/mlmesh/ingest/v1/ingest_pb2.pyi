from mlmesh.types.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LeaseState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEASE_STATE_UNSPECIFIED: _ClassVar[LeaseState]
    LEASE_STATE_ACTIVE: _ClassVar[LeaseState]
    LEASE_STATE_EXPIRED: _ClassVar[LeaseState]
    LEASE_STATE_COMPLETED: _ClassVar[LeaseState]
LEASE_STATE_UNSPECIFIED: LeaseState
LEASE_STATE_ACTIVE: LeaseState
LEASE_STATE_EXPIRED: LeaseState
LEASE_STATE_COMPLETED: LeaseState

class FeatureSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: _tensor_pb2.DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[_tensor_pb2.DType, str]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class DatasetSchema(_message.Message):
    __slots__ = ("features",)
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedCompositeFieldContainer[FeatureSpec]
    def __init__(self, features: _Optional[_Iterable[_Union[FeatureSpec, _Mapping]]] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("name", "schema", "num_records", "num_partitions", "num_bytes", "max_partition_bytes", "created_unix")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    NUM_RECORDS_FIELD_NUMBER: _ClassVar[int]
    NUM_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    NUM_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PARTITION_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    name: str
    schema: DatasetSchema
    num_records: int
    num_partitions: int
    num_bytes: int
    max_partition_bytes: int
    created_unix: float
    def __init__(self, name: _Optional[str] = ..., schema: _Optional[_Union[DatasetSchema, _Mapping]] = ..., num_records: _Optional[int] = ..., num_partitions: _Optional[int] = ..., num_bytes: _Optional[int] = ..., max_partition_bytes: _Optional[int] = ..., created_unix: _Optional[float] = ...) -> None: ...

class Partition(_message.Message):
    __slots__ = ("dataset", "partition_id", "num_records", "num_bytes", "created_unix")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PARTITION_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_RECORDS_FIELD_NUMBER: _ClassVar[int]
    NUM_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    partition_id: int
    num_records: int
    num_bytes: int
    created_unix: float
    def __init__(self, dataset: _Optional[str] = ..., partition_id: _Optional[int] = ..., num_records: _Optional[int] = ..., num_bytes: _Optional[int] = ..., created_unix: _Optional[float] = ...) -> None: ...

class RecordBatch(_message.Message):
    __slots__ = ("features",)
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    features: _containers.MessageMap[str, _tensor_pb2.Tensor]
    def __init__(self, features: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ...) -> None: ...

class CreateDatasetRequest(_message.Message):
    __slots__ = ("name", "schema", "max_partition_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    MAX_PARTITION_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    schema: DatasetSchema
    max_partition_bytes: int
    def __init__(self, name: _Optional[str] = ..., schema: _Optional[_Union[DatasetSchema, _Mapping]] = ..., max_partition_bytes: _Optional[int] = ...) -> None: ...

class CreateDatasetResponse(_message.Message):
    __slots__ = ("dataset", "created")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    created: bool
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ...) -> None: ...

class AppendRequest(_message.Message):
    __slots__ = ("dataset", "batch", "complete_lease_id")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    batch: RecordBatch
    complete_lease_id: str
    def __init__(self, dataset: _Optional[str] = ..., batch: _Optional[_Union[RecordBatch, _Mapping]] = ..., complete_lease_id: _Optional[str] = ...) -> None: ...

class AppendResponse(_message.Message):
    __slots__ = ("dataset", "records_appended", "partitions", "status")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    RECORDS_APPENDED_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    records_appended: int
    partitions: _containers.RepeatedCompositeFieldContainer[Partition]
    status: QueueStatus
    def __init__(self, dataset: _Optional[str] = ..., records_appended: _Optional[int] = ..., partitions: _Optional[_Iterable[_Union[Partition, _Mapping]]] = ..., status: _Optional[_Union[QueueStatus, _Mapping]] = ...) -> None: ...

class ListPartitionsRequest(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    def __init__(self, dataset: _Optional[str] = ...) -> None: ...

class ListPartitionsResponse(_message.Message):
    __slots__ = ("partitions",)
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    partitions: _containers.RepeatedCompositeFieldContainer[Partition]
    def __init__(self, partitions: _Optional[_Iterable[_Union[Partition, _Mapping]]] = ...) -> None: ...

class ReadPartitionRequest(_message.Message):
    __slots__ = ("dataset", "partition_id", "batch_size")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PARTITION_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    partition_id: int
    batch_size: int
    def __init__(self, dataset: _Optional[str] = ..., partition_id: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class ReadPartitionResponse(_message.Message):
    __slots__ = ("batch",)
    BATCH_FIELD_NUMBER: _ClassVar[int]
    batch: RecordBatch
    def __init__(self, batch: _Optional[_Union[RecordBatch, _Mapping]] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "job_id", "dataset", "partition_id", "epoch", "num_records", "lease_id", "lease_deadline_unix", "attempt")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PARTITION_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    NUM_RECORDS_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    job_id: str
    dataset: str
    partition_id: int
    epoch: int
    num_records: int
    lease_id: str
    lease_deadline_unix: float
    attempt: int
    def __init__(self, task_id: _Optional[str] = ..., job_id: _Optional[str] = ..., dataset: _Optional[str] = ..., partition_id: _Optional[int] = ..., epoch: _Optional[int] = ..., num_records: _Optional[int] = ..., lease_id: _Optional[str] = ..., lease_deadline_unix: _Optional[float] = ..., attempt: _Optional[int] = ...) -> None: ...

class QueueStatus(_message.Message):
    __slots__ = ("job_id", "pending", "leased", "completed", "total", "done", "epochs")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    LEASED_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    pending: int
    leased: int
    completed: int
    total: int
    done: bool
    epochs: _containers.RepeatedCompositeFieldContainer[EpochProgress]
    def __init__(self, job_id: _Optional[str] = ..., pending: _Optional[int] = ..., leased: _Optional[int] = ..., completed: _Optional[int] = ..., total: _Optional[int] = ..., done: _Optional[bool] = ..., epochs: _Optional[_Iterable[_Union[EpochProgress, _Mapping]]] = ...) -> None: ...

class EpochProgress(_message.Message):
    __slots__ = ("epoch", "pending", "leased", "completed", "total")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    LEASED_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    pending: int
    leased: int
    completed: int
    total: int
    def __init__(self, epoch: _Optional[int] = ..., pending: _Optional[int] = ..., leased: _Optional[int] = ..., completed: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class EnqueueEpochRequest(_message.Message):
    __slots__ = ("job_id", "dataset", "epoch", "shuffle", "seed", "since_unix", "from_partition_id", "to_partition_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SHUFFLE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_FIELD_NUMBER: _ClassVar[int]
    FROM_PARTITION_ID_FIELD_NUMBER: _ClassVar[int]
    TO_PARTITION_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    dataset: str
    epoch: int
    shuffle: bool
    seed: int
    since_unix: float
    from_partition_id: int
    to_partition_id: int
    def __init__(self, job_id: _Optional[str] = ..., dataset: _Optional[str] = ..., epoch: _Optional[int] = ..., shuffle: _Optional[bool] = ..., seed: _Optional[int] = ..., since_unix: _Optional[float] = ..., from_partition_id: _Optional[int] = ..., to_partition_id: _Optional[int] = ...) -> None: ...

class EnqueueEpochResponse(_message.Message):
    __slots__ = ("tasks_enqueued", "status")
    TASKS_ENQUEUED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    tasks_enqueued: int
    status: QueueStatus
    def __init__(self, tasks_enqueued: _Optional[int] = ..., status: _Optional[_Union[QueueStatus, _Mapping]] = ...) -> None: ...

class LeaseTaskRequest(_message.Message):
    __slots__ = ("job_id", "worker_id", "lease_seconds", "max_tasks", "complete_lease_ids")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_TASKS_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_LEASE_IDS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    worker_id: str
    lease_seconds: float
    max_tasks: int
    complete_lease_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., lease_seconds: _Optional[float] = ..., max_tasks: _Optional[int] = ..., complete_lease_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class LeaseTaskResponse(_message.Message):
    __slots__ = ("tasks", "status")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    status: QueueStatus
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ..., status: _Optional[_Union[QueueStatus, _Mapping]] = ...) -> None: ...

class ExtendLeaseRequest(_message.Message):
    __slots__ = ("lease_id", "lease_seconds")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    lease_seconds: float
    def __init__(self, lease_id: _Optional[str] = ..., lease_seconds: _Optional[float] = ...) -> None: ...

class ExtendLeaseResponse(_message.Message):
    __slots__ = ("lease_deadline_unix",)
    LEASE_DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    lease_deadline_unix: float
    def __init__(self, lease_deadline_unix: _Optional[float] = ...) -> None: ...

class CompleteTaskRequest(_message.Message):
    __slots__ = ("lease_id",)
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    def __init__(self, lease_id: _Optional[str] = ...) -> None: ...

class CompleteTaskResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: QueueStatus
    def __init__(self, status: _Optional[_Union[QueueStatus, _Mapping]] = ...) -> None: ...

class GetQueueStatusRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetQueueStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: QueueStatus
    def __init__(self, status: _Optional[_Union[QueueStatus, _Mapping]] = ...) -> None: ...

class GetLeaseRequest(_message.Message):
    __slots__ = ("lease_id",)
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    def __init__(self, lease_id: _Optional[str] = ...) -> None: ...

class GetLeaseResponse(_message.Message):
    __slots__ = ("lease_id", "state", "task_id", "worker_id", "deadline_unix")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    state: LeaseState
    task_id: str
    worker_id: str
    deadline_unix: float
    def __init__(self, lease_id: _Optional[str] = ..., state: _Optional[_Union[LeaseState, str]] = ..., task_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., deadline_unix: _Optional[float] = ...) -> None: ...
