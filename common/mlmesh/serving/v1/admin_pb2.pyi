from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BatchingParameters(_message.Message):
    __slots__ = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads", "allowed_batch_sizes", "max_queue")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    BATCH_TIMEOUT_MICROS_FIELD_NUMBER: _ClassVar[int]
    MAX_ENQUEUED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    NUM_BATCH_THREADS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    batch_timeout_micros: int
    max_enqueued_batches: int
    num_batch_threads: int
    allowed_batch_sizes: BatchSizes
    max_queue: int
    def __init__(self, max_batch_size: _Optional[int] = ..., batch_timeout_micros: _Optional[int] = ..., max_enqueued_batches: _Optional[int] = ..., num_batch_threads: _Optional[int] = ..., allowed_batch_sizes: _Optional[_Union[BatchSizes, _Mapping]] = ..., max_queue: _Optional[int] = ...) -> None: ...

class BatchSizes(_message.Message):
    __slots__ = ("sizes",)
    SIZES_FIELD_NUMBER: _ClassVar[int]
    sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class ModelBatching(_message.Message):
    __slots__ = ("model_name", "parameters")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    parameters: BatchingParameters
    def __init__(self, model_name: _Optional[str] = ..., parameters: _Optional[_Union[BatchingParameters, _Mapping]] = ...) -> None: ...

class GetBatchingRequest(_message.Message):
    __slots__ = ("model_name",)
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    def __init__(self, model_name: _Optional[str] = ...) -> None: ...

class GetBatchingResponse(_message.Message):
    __slots__ = ("defaults", "models")
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    defaults: BatchingParameters
    models: _containers.RepeatedCompositeFieldContainer[ModelBatching]
    def __init__(self, defaults: _Optional[_Union[BatchingParameters, _Mapping]] = ..., models: _Optional[_Iterable[_Union[ModelBatching, _Mapping]]] = ...) -> None: ...

class SetBatchingRequest(_message.Message):
    __slots__ = ("model_name", "parameters")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    parameters: BatchingParameters
    def __init__(self, model_name: _Optional[str] = ..., parameters: _Optional[_Union[BatchingParameters, _Mapping]] = ...) -> None: ...

class SetBatchingResponse(_message.Message):
    __slots__ = ("defaults", "models")
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    defaults: BatchingParameters
    models: _containers.RepeatedCompositeFieldContainer[ModelBatching]
    def __init__(self, defaults: _Optional[_Union[BatchingParameters, _Mapping]] = ..., models: _Optional[_Iterable[_Union[ModelBatching, _Mapping]]] = ...) -> None: ...
