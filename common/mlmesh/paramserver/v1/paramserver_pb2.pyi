from mlmesh.types.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

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
    __slots__ = ("name", "dtype", "shape", "row_sharded", "initializer")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    ROW_SHARDED_FIELD_NUMBER: _ClassVar[int]
    INITIALIZER_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: _tensor_pb2.DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    row_sharded: bool
    initializer: Initializer
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[_tensor_pb2.DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., row_sharded: _Optional[bool] = ..., initializer: _Optional[_Union[Initializer, _Mapping]] = ...) -> None: ...

class OptimizerSpec(_message.Message):
    __slots__ = ("kind", "learning_rate", "beta_1", "beta_2", "epsilon")
    KIND_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    BETA_1_FIELD_NUMBER: _ClassVar[int]
    BETA_2_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    kind: str
    learning_rate: float
    beta_1: float
    beta_2: float
    epsilon: float
    def __init__(self, kind: _Optional[str] = ..., learning_rate: _Optional[float] = ..., beta_1: _Optional[float] = ..., beta_2: _Optional[float] = ..., epsilon: _Optional[float] = ...) -> None: ...

class RegisterVariablesRequest(_message.Message):
    __slots__ = ("job_id", "variables", "optimizer")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    variables: _containers.RepeatedCompositeFieldContainer[VariableSpec]
    optimizer: OptimizerSpec
    def __init__(self, job_id: _Optional[str] = ..., variables: _Optional[_Iterable[_Union[VariableSpec, _Mapping]]] = ..., optimizer: _Optional[_Union[OptimizerSpec, _Mapping]] = ...) -> None: ...

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

class PullRequest(_message.Message):
    __slots__ = ("job_id", "dense", "rows")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DENSE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    dense: _containers.RepeatedScalarFieldContainer[str]
    rows: _containers.RepeatedCompositeFieldContainer[RowSlice]
    def __init__(self, job_id: _Optional[str] = ..., dense: _Optional[_Iterable[str]] = ..., rows: _Optional[_Iterable[_Union[RowSlice, _Mapping]]] = ...) -> None: ...

class PullResponse(_message.Message):
    __slots__ = ("dense", "rows", "version")
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
    dense: _containers.MessageMap[str, _tensor_pb2.Tensor]
    rows: _containers.RepeatedCompositeFieldContainer[RowSlice]
    version: int
    def __init__(self, dense: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., rows: _Optional[_Iterable[_Union[RowSlice, _Mapping]]] = ..., version: _Optional[int] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("job_id", "worker_id", "step", "dense_grads", "row_grads")
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
    job_id: str
    worker_id: str
    step: int
    dense_grads: _containers.MessageMap[str, _tensor_pb2.Tensor]
    row_grads: _containers.RepeatedCompositeFieldContainer[RowSlice]
    def __init__(self, job_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., step: _Optional[int] = ..., dense_grads: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., row_grads: _Optional[_Iterable[_Union[RowSlice, _Mapping]]] = ...) -> None: ...

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

class GetShardInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VariableInfo(_message.Message):
    __slots__ = ("job_id", "name", "dtype", "shape", "row_sharded", "local_rows")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    ROW_SHARDED_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ROWS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    dtype: _tensor_pb2.DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    row_sharded: bool
    local_rows: int
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., dtype: _Optional[_Union[_tensor_pb2.DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., row_sharded: _Optional[bool] = ..., local_rows: _Optional[int] = ...) -> None: ...

class GetShardInfoResponse(_message.Message):
    __slots__ = ("shard_index", "num_shards", "variables")
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    shard_index: int
    num_shards: int
    variables: _containers.RepeatedCompositeFieldContainer[VariableInfo]
    def __init__(self, shard_index: _Optional[int] = ..., num_shards: _Optional[int] = ..., variables: _Optional[_Iterable[_Union[VariableInfo, _Mapping]]] = ...) -> None: ...
