from google.api import annotations_pb2 as _annotations_pb2
from google.api import httpbody_pb2 as _httpbody_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import wrappers_pb2 as _wrappers_pb2
from mlmesh.types.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelVersionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_VERSION_STATE_UNSPECIFIED: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_LOADING: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_AVAILABLE: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_UNLOADING: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_END: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_FAILED: _ClassVar[ModelVersionState]
MODEL_VERSION_STATE_UNSPECIFIED: ModelVersionState
MODEL_VERSION_STATE_LOADING: ModelVersionState
MODEL_VERSION_STATE_AVAILABLE: ModelVersionState
MODEL_VERSION_STATE_UNLOADING: ModelVersionState
MODEL_VERSION_STATE_END: ModelVersionState
MODEL_VERSION_STATE_FAILED: ModelVersionState

class PredictRequest(_message.Message):
    __slots__ = ("model_name", "version", "inputs", "instances")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: int
    inputs: _containers.MessageMap[str, _tensor_pb2.Tensor]
    instances: _struct_pb2.ListValue
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[int] = ..., inputs: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., instances: _Optional[_Union[_struct_pb2.ListValue, _Mapping]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model_name", "version", "outputs", "predictions")
    class OutputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: int
    outputs: _containers.MessageMap[str, _tensor_pb2.Tensor]
    predictions: _struct_pb2.ListValue
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[int] = ..., outputs: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., predictions: _Optional[_Union[_struct_pb2.ListValue, _Mapping]] = ...) -> None: ...

class ModelVersionStatus(_message.Message):
    __slots__ = ("version", "state", "error")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    version: int
    state: ModelVersionState
    error: str
    def __init__(self, version: _Optional[int] = ..., state: _Optional[_Union[ModelVersionState, str]] = ..., error: _Optional[str] = ...) -> None: ...

class GetModelStatusRequest(_message.Message):
    __slots__ = ("model_name",)
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    def __init__(self, model_name: _Optional[str] = ...) -> None: ...

class GetModelStatusResponse(_message.Message):
    __slots__ = ("model_name", "versions")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersionStatus]
    def __init__(self, model_name: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[ModelVersionStatus, _Mapping]]] = ...) -> None: ...

class RestModelRequest(_message.Message):
    __slots__ = ("model_name", "version", "version_label")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_LABEL_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: int
    version_label: str
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[int] = ..., version_label: _Optional[str] = ...) -> None: ...

class RestStatus(_message.Message):
    __slots__ = ("error_code", "error_message")
    class Code(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OK: _ClassVar[RestStatus.Code]
        CANCELLED: _ClassVar[RestStatus.Code]
        UNKNOWN: _ClassVar[RestStatus.Code]
        INVALID_ARGUMENT: _ClassVar[RestStatus.Code]
        DEADLINE_EXCEEDED: _ClassVar[RestStatus.Code]
        NOT_FOUND: _ClassVar[RestStatus.Code]
        ALREADY_EXISTS: _ClassVar[RestStatus.Code]
        PERMISSION_DENIED: _ClassVar[RestStatus.Code]
        RESOURCE_EXHAUSTED: _ClassVar[RestStatus.Code]
        FAILED_PRECONDITION: _ClassVar[RestStatus.Code]
        ABORTED: _ClassVar[RestStatus.Code]
        OUT_OF_RANGE: _ClassVar[RestStatus.Code]
        UNIMPLEMENTED: _ClassVar[RestStatus.Code]
        INTERNAL: _ClassVar[RestStatus.Code]
        UNAVAILABLE: _ClassVar[RestStatus.Code]
        DATA_LOSS: _ClassVar[RestStatus.Code]
        UNAUTHENTICATED: _ClassVar[RestStatus.Code]
    OK: RestStatus.Code
    CANCELLED: RestStatus.Code
    UNKNOWN: RestStatus.Code
    INVALID_ARGUMENT: RestStatus.Code
    DEADLINE_EXCEEDED: RestStatus.Code
    NOT_FOUND: RestStatus.Code
    ALREADY_EXISTS: RestStatus.Code
    PERMISSION_DENIED: RestStatus.Code
    RESOURCE_EXHAUSTED: RestStatus.Code
    FAILED_PRECONDITION: RestStatus.Code
    ABORTED: RestStatus.Code
    OUT_OF_RANGE: RestStatus.Code
    UNIMPLEMENTED: RestStatus.Code
    INTERNAL: RestStatus.Code
    UNAVAILABLE: RestStatus.Code
    DATA_LOSS: RestStatus.Code
    UNAUTHENTICATED: RestStatus.Code
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    error_code: RestStatus.Code
    error_message: str
    def __init__(self, error_code: _Optional[_Union[RestStatus.Code, str]] = ..., error_message: _Optional[str] = ...) -> None: ...

class RestModelVersionStatus(_message.Message):
    __slots__ = ("version", "state", "status")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[RestModelVersionStatus.State]
        START: _ClassVar[RestModelVersionStatus.State]
        LOADING: _ClassVar[RestModelVersionStatus.State]
        AVAILABLE: _ClassVar[RestModelVersionStatus.State]
        UNLOADING: _ClassVar[RestModelVersionStatus.State]
        END: _ClassVar[RestModelVersionStatus.State]
    UNKNOWN: RestModelVersionStatus.State
    START: RestModelVersionStatus.State
    LOADING: RestModelVersionStatus.State
    AVAILABLE: RestModelVersionStatus.State
    UNLOADING: RestModelVersionStatus.State
    END: RestModelVersionStatus.State
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    version: int
    state: RestModelVersionStatus.State
    status: RestStatus
    def __init__(self, version: _Optional[int] = ..., state: _Optional[_Union[RestModelVersionStatus.State, str]] = ..., status: _Optional[_Union[RestStatus, _Mapping]] = ...) -> None: ...

class RestGetModelStatusResponse(_message.Message):
    __slots__ = ("model_version_status",)
    MODEL_VERSION_STATUS_FIELD_NUMBER: _ClassVar[int]
    model_version_status: _containers.RepeatedCompositeFieldContainer[RestModelVersionStatus]
    def __init__(self, model_version_status: _Optional[_Iterable[_Union[RestModelVersionStatus, _Mapping]]] = ...) -> None: ...

class RestModelSpec(_message.Message):
    __slots__ = ("name", "version", "version_label", "signature_name")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_LABEL_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: _wrappers_pb2.Int64Value
    version_label: str
    signature_name: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[_Union[_wrappers_pb2.Int64Value, _Mapping]] = ..., version_label: _Optional[str] = ..., signature_name: _Optional[str] = ...) -> None: ...

class RestGetModelMetadataResponse(_message.Message):
    __slots__ = ("model_spec", "metadata")
    MODEL_SPEC_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    model_spec: RestModelSpec
    metadata: _struct_pb2.Struct
    def __init__(self, model_spec: _Optional[_Union[RestModelSpec, _Mapping]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class RestJsonRequest(_message.Message):
    __slots__ = ("model_name", "version", "version_label", "body")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_LABEL_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: int
    version_label: str
    body: _httpbody_pb2.HttpBody
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[int] = ..., version_label: _Optional[str] = ..., body: _Optional[_Union[_httpbody_pb2.HttpBody, _Mapping]] = ...) -> None: ...
