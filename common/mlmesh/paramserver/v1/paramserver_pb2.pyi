from mlmesh.types.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RowLayout(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROW_LAYOUT_UNSPECIFIED: _ClassVar[RowLayout]
    ROW_LAYOUT_HASH: _ClassVar[RowLayout]
    ROW_LAYOUT_BLOCKS: _ClassVar[RowLayout]

class ConsistencyMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONSISTENCY_UNSPECIFIED: _ClassVar[ConsistencyMode]
    CONSISTENCY_ASYNC: _ClassVar[ConsistencyMode]
    CONSISTENCY_SYNC: _ClassVar[ConsistencyMode]
    CONSISTENCY_BOUNDED: _ClassVar[ConsistencyMode]
ROW_LAYOUT_UNSPECIFIED: RowLayout
ROW_LAYOUT_HASH: RowLayout
ROW_LAYOUT_BLOCKS: RowLayout
CONSISTENCY_UNSPECIFIED: ConsistencyMode
CONSISTENCY_ASYNC: ConsistencyMode
CONSISTENCY_SYNC: ConsistencyMode
CONSISTENCY_BOUNDED: ConsistencyMode

class Initializer(_message.Message):
    __slots__ = ("kind", "scale", "seed", "value")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    scale: float
    seed: int
    value: _tensor_pb2.Tensor
    def __init__(self, kind: _Optional[str] = ..., scale: _Optional[float] = ..., seed: _Optional[int] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class VariableSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape", "row_sharded", "initializer", "row_layout")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    ROW_SHARDED_FIELD_NUMBER: _ClassVar[int]
    INITIALIZER_FIELD_NUMBER: _ClassVar[int]
    ROW_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: _tensor_pb2.DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    row_sharded: bool
    initializer: Initializer
    row_layout: RowLayout
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[_tensor_pb2.DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., row_sharded: _Optional[bool] = ..., initializer: _Optional[_Union[Initializer, _Mapping]] = ..., row_layout: _Optional[_Union[RowLayout, str]] = ...) -> None: ...

class OptimizerSpec(_message.Message):
    __slots__ = ("kind", "learning_rate", "beta_1", "beta_2", "epsilon", "momentum", "nesterov")
    KIND_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    BETA_1_FIELD_NUMBER: _ClassVar[int]
    BETA_2_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    NESTEROV_FIELD_NUMBER: _ClassVar[int]
    kind: str
    learning_rate: float
    beta_1: float
    beta_2: float
    epsilon: float
    momentum: float
    nesterov: bool
    def __init__(self, kind: _Optional[str] = ..., learning_rate: _Optional[float] = ..., beta_1: _Optional[float] = ..., beta_2: _Optional[float] = ..., epsilon: _Optional[float] = ..., momentum: _Optional[float] = ..., nesterov: _Optional[bool] = ...) -> None: ...

class JobConfig(_message.Message):
    __slots__ = ("consistency", "staleness", "worker_lease_seconds", "skip_nonfinite_pushes", "exactly_once")
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    WORKER_LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SKIP_NONFINITE_PUSHES_FIELD_NUMBER: _ClassVar[int]
    EXACTLY_ONCE_FIELD_NUMBER: _ClassVar[int]
    consistency: ConsistencyMode
    staleness: int
    worker_lease_seconds: float
    skip_nonfinite_pushes: bool
    exactly_once: bool
    def __init__(self, consistency: _Optional[_Union[ConsistencyMode, str]] = ..., staleness: _Optional[int] = ..., worker_lease_seconds: _Optional[float] = ..., skip_nonfinite_pushes: _Optional[bool] = ..., exactly_once: _Optional[bool] = ...) -> None: ...

class RegisterVariablesRequest(_message.Message):
    __slots__ = ("job_id", "variables", "optimizer", "config")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    variables: _containers.RepeatedCompositeFieldContainer[VariableSpec]
    optimizer: OptimizerSpec
    config: JobConfig
    def __init__(self, job_id: _Optional[str] = ..., variables: _Optional[_Iterable[_Union[VariableSpec, _Mapping]]] = ..., optimizer: _Optional[_Union[OptimizerSpec, _Mapping]] = ..., config: _Optional[_Union[JobConfig, _Mapping]] = ...) -> None: ...

class RegisterChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: RegisterVariablesRequest
    data: bytes
    def __init__(self, header: _Optional[_Union[RegisterVariablesRequest, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class RegisterVariablesResponse(_message.Message):
    __slots__ = ("created", "existing")
    CREATED_FIELD_NUMBER: _ClassVar[int]
    EXISTING_FIELD_NUMBER: _ClassVar[int]
    created: _containers.RepeatedScalarFieldContainer[str]
    existing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, created: _Optional[_Iterable[str]] = ..., existing: _Optional[_Iterable[str]] = ...) -> None: ...

class RowSlice(_message.Message):
    __slots__ = ("name", "rows", "values")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    rows: _containers.RepeatedScalarFieldContainer[int]
    values: _tensor_pb2.Tensor
    def __init__(self, name: _Optional[str] = ..., rows: _Optional[_Iterable[int]] = ..., values: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class JoinJobRequest(_message.Message):
    __slots__ = ("job_id", "worker_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    worker_id: str
    def __init__(self, job_id: _Optional[str] = ..., worker_id: _Optional[str] = ...) -> None: ...

class JoinJobResponse(_message.Message):
    __slots__ = ("clock", "config")
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    clock: int
    config: JobConfig
    def __init__(self, clock: _Optional[int] = ..., config: _Optional[_Union[JobConfig, _Mapping]] = ...) -> None: ...

class LeaveJobRequest(_message.Message):
    __slots__ = ("job_id", "worker_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    worker_id: str
    def __init__(self, job_id: _Optional[str] = ..., worker_id: _Optional[str] = ...) -> None: ...

class LeaveJobResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("job_id", "dense", "rows", "worker_id", "clock", "pushed")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DENSE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    PUSHED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    dense: _containers.RepeatedScalarFieldContainer[str]
    rows: _containers.RepeatedCompositeFieldContainer[RowSlice]
    worker_id: str
    clock: int
    pushed: int
    def __init__(self, job_id: _Optional[str] = ..., dense: _Optional[_Iterable[str]] = ..., rows: _Optional[_Iterable[_Union[RowSlice, _Mapping]]] = ..., worker_id: _Optional[str] = ..., clock: _Optional[int] = ..., pushed: _Optional[int] = ...) -> None: ...

class PullResponse(_message.Message):
    __slots__ = ("dense", "rows", "version", "clock")
    class DenseEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    DENSE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    dense: _containers.MessageMap[str, _tensor_pb2.Tensor]
    rows: _containers.RepeatedCompositeFieldContainer[RowSlice]
    version: int
    clock: int
    def __init__(self, dense: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., rows: _Optional[_Iterable[_Union[RowSlice, _Mapping]]] = ..., version: _Optional[int] = ..., clock: _Optional[int] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("job_id", "worker_id", "step", "dense_grads", "row_grads", "lease_id", "task_id")
    class DenseGradsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    DENSE_GRADS_FIELD_NUMBER: _ClassVar[int]
    ROW_GRADS_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    worker_id: str
    step: int
    dense_grads: _containers.MessageMap[str, _tensor_pb2.Tensor]
    row_grads: _containers.RepeatedCompositeFieldContainer[RowSlice]
    lease_id: str
    task_id: str
    def __init__(self, job_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., step: _Optional[int] = ..., dense_grads: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., row_grads: _Optional[_Iterable[_Union[RowSlice, _Mapping]]] = ..., lease_id: _Optional[str] = ..., task_id: _Optional[str] = ...) -> None: ...

class PullChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: PullResponse
    data: bytes
    def __init__(self, header: _Optional[_Union[PullResponse, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PushChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: PushRequest
    data: bytes
    def __init__(self, header: _Optional[_Union[PushRequest, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PushResponse(_message.Message):
    __slots__ = ("applied", "version")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    version: int
    def __init__(self, applied: _Optional[bool] = ..., version: _Optional[int] = ...) -> None: ...

class SaveCheckpointRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class SaveCheckpointResponse(_message.Message):
    __slots__ = ("path", "version")
    PATH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    path: str
    version: int
    def __init__(self, path: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class LoadCheckpointRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class LoadCheckpointResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class DropJobRequest(_message.Message):
    __slots__ = ("job_id", "force")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    force: bool
    def __init__(self, job_id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class DropJobResponse(_message.Message):
    __slots__ = ("dropped", "already_dropped", "checkpoint_path", "version")
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_DROPPED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_PATH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    dropped: bool
    already_dropped: bool
    checkpoint_path: str
    version: int
    def __init__(self, dropped: _Optional[bool] = ..., already_dropped: _Optional[bool] = ..., checkpoint_path: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetShardInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JobInfo(_message.Message):
    __slots__ = ("job_id", "config", "optimizer", "clock", "version", "workers", "lost_steps", "checkpoints", "staged", "applied_pushes_by_task", "leases_committed", "leases_aborted")
    class WorkersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class AppliedPushesByTaskEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    LOST_STEPS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    STAGED_FIELD_NUMBER: _ClassVar[int]
    APPLIED_PUSHES_BY_TASK_FIELD_NUMBER: _ClassVar[int]
    LEASES_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    LEASES_ABORTED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    config: JobConfig
    optimizer: OptimizerSpec
    clock: int
    version: int
    workers: _containers.ScalarMap[str, int]
    lost_steps: int
    checkpoints: _containers.RepeatedCompositeFieldContainer[CheckpointInfo]
    staged: _containers.RepeatedCompositeFieldContainer[StagedLease]
    applied_pushes_by_task: _containers.ScalarMap[str, int]
    leases_committed: int
    leases_aborted: int
    def __init__(self, job_id: _Optional[str] = ..., config: _Optional[_Union[JobConfig, _Mapping]] = ..., optimizer: _Optional[_Union[OptimizerSpec, _Mapping]] = ..., clock: _Optional[int] = ..., version: _Optional[int] = ..., workers: _Optional[_Mapping[str, int]] = ..., lost_steps: _Optional[int] = ..., checkpoints: _Optional[_Iterable[_Union[CheckpointInfo, _Mapping]]] = ..., staged: _Optional[_Iterable[_Union[StagedLease, _Mapping]]] = ..., applied_pushes_by_task: _Optional[_Mapping[str, int]] = ..., leases_committed: _Optional[int] = ..., leases_aborted: _Optional[int] = ...) -> None: ...

class StagedLease(_message.Message):
    __slots__ = ("lease_id", "task_id", "worker_id", "pushes", "bytes", "age_seconds")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PUSHES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    task_id: str
    worker_id: str
    pushes: int
    bytes: int
    age_seconds: float
    def __init__(self, lease_id: _Optional[str] = ..., task_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., pushes: _Optional[int] = ..., bytes: _Optional[int] = ..., age_seconds: _Optional[float] = ...) -> None: ...

class CommitLeaseRequest(_message.Message):
    __slots__ = ("job_id", "lease_id", "task_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    lease_id: str
    task_id: str
    def __init__(self, job_id: _Optional[str] = ..., lease_id: _Optional[str] = ..., task_id: _Optional[str] = ...) -> None: ...

class CommitLeaseResponse(_message.Message):
    __slots__ = ("applied_pushes", "already_committed", "version")
    APPLIED_PUSHES_FIELD_NUMBER: _ClassVar[int]
    ALREADY_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    applied_pushes: int
    already_committed: bool
    version: int
    def __init__(self, applied_pushes: _Optional[int] = ..., already_committed: _Optional[bool] = ..., version: _Optional[int] = ...) -> None: ...

class AbortLeaseRequest(_message.Message):
    __slots__ = ("job_id", "lease_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    lease_id: str
    def __init__(self, job_id: _Optional[str] = ..., lease_id: _Optional[str] = ...) -> None: ...

class AbortLeaseResponse(_message.Message):
    __slots__ = ("discarded_pushes",)
    DISCARDED_PUSHES_FIELD_NUMBER: _ClassVar[int]
    discarded_pushes: int
    def __init__(self, discarded_pushes: _Optional[int] = ...) -> None: ...

class CheckpointInfo(_message.Message):
    __slots__ = ("path", "version", "clock")
    PATH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    path: str
    version: int
    clock: int
    def __init__(self, path: _Optional[str] = ..., version: _Optional[int] = ..., clock: _Optional[int] = ...) -> None: ...

class VariableInfo(_message.Message):
    __slots__ = ("job_id", "name", "dtype", "shape", "row_sharded", "local_rows", "row_layout")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    ROW_SHARDED_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ROWS_FIELD_NUMBER: _ClassVar[int]
    ROW_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    dtype: _tensor_pb2.DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    row_sharded: bool
    local_rows: int
    row_layout: RowLayout
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., dtype: _Optional[_Union[_tensor_pb2.DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., row_sharded: _Optional[bool] = ..., local_rows: _Optional[int] = ..., row_layout: _Optional[_Union[RowLayout, str]] = ...) -> None: ...

class GetShardInfoResponse(_message.Message):
    __slots__ = ("shard_index", "num_shards", "variables", "jobs", "dropped_jobs")
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_JOBS_FIELD_NUMBER: _ClassVar[int]
    shard_index: int
    num_shards: int
    variables: _containers.RepeatedCompositeFieldContainer[VariableInfo]
    jobs: _containers.RepeatedCompositeFieldContainer[JobInfo]
    dropped_jobs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, shard_index: _Optional[int] = ..., num_shards: _Optional[int] = ..., variables: _Optional[_Iterable[_Union[VariableInfo, _Mapping]]] = ..., jobs: _Optional[_Iterable[_Union[JobInfo, _Mapping]]] = ..., dropped_jobs: _Optional[_Iterable[str]] = ...) -> None: ...
