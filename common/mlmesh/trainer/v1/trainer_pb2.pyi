from mlmesh.paramserver.v1 import paramserver_pb2 as _paramserver_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_PENDING: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_EVALUATING: _ClassVar[JobState]
    JOB_STATE_EXPORTING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_PENDING: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_EVALUATING: JobState
JOB_STATE_EXPORTING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class JobSpec(_message.Message):
    __slots__ = ("model", "model_args", "train_dataset", "eval_dataset", "epochs", "batch_size", "optimizer", "model_name", "seed", "eval_max_records", "consistency", "worker_lease_seconds", "skip_nonfinite_pushes", "continuous", "window_hours", "exactly_once")
    class ModelArgsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_ARGS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_DATASET_FIELD_NUMBER: _ClassVar[int]
    EVAL_DATASET_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    EVAL_MAX_RECORDS_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    WORKER_LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SKIP_NONFINITE_PUSHES_FIELD_NUMBER: _ClassVar[int]
    CONTINUOUS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_HOURS_FIELD_NUMBER: _ClassVar[int]
    EXACTLY_ONCE_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_args: _containers.ScalarMap[str, str]
    train_dataset: str
    eval_dataset: str
    epochs: int
    batch_size: int
    optimizer: _paramserver_pb2.OptimizerSpec
    model_name: str
    seed: int
    eval_max_records: int
    consistency: str
    worker_lease_seconds: float
    skip_nonfinite_pushes: bool
    continuous: bool
    window_hours: float
    exactly_once: bool
    def __init__(self, model: _Optional[str] = ..., model_args: _Optional[_Mapping[str, str]] = ..., train_dataset: _Optional[str] = ..., eval_dataset: _Optional[str] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., optimizer: _Optional[_Union[_paramserver_pb2.OptimizerSpec, _Mapping]] = ..., model_name: _Optional[str] = ..., seed: _Optional[int] = ..., eval_max_records: _Optional[int] = ..., consistency: _Optional[str] = ..., worker_lease_seconds: _Optional[float] = ..., skip_nonfinite_pushes: _Optional[bool] = ..., continuous: _Optional[bool] = ..., window_hours: _Optional[float] = ..., exactly_once: _Optional[bool] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "spec", "state", "steps", "examples", "loss", "examples_per_second", "tasks_total", "tasks_completed", "eval_metrics", "export_path", "model_version", "error", "created_unix", "started_unix", "finished_unix", "active_workers", "train_seconds", "epochs_completed", "epochs_exported")
    class EvalMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    TASKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TASKS_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    EVAL_METRICS_FIELD_NUMBER: _ClassVar[int]
    EXPORT_PATH_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_FIELD_NUMBER: _ClassVar[int]
    FINISHED_UNIX_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_WORKERS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_EXPORTED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    spec: JobSpec
    state: JobState
    steps: int
    examples: int
    loss: float
    examples_per_second: float
    tasks_total: int
    tasks_completed: int
    eval_metrics: _containers.ScalarMap[str, float]
    export_path: str
    model_version: int
    error: str
    created_unix: float
    started_unix: float
    finished_unix: float
    active_workers: int
    train_seconds: float
    epochs_completed: int
    epochs_exported: int
    def __init__(self, job_id: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., steps: _Optional[int] = ..., examples: _Optional[int] = ..., loss: _Optional[float] = ..., examples_per_second: _Optional[float] = ..., tasks_total: _Optional[int] = ..., tasks_completed: _Optional[int] = ..., eval_metrics: _Optional[_Mapping[str, float]] = ..., export_path: _Optional[str] = ..., model_version: _Optional[int] = ..., error: _Optional[str] = ..., created_unix: _Optional[float] = ..., started_unix: _Optional[float] = ..., finished_unix: _Optional[float] = ..., active_workers: _Optional[int] = ..., train_seconds: _Optional[float] = ..., epochs_completed: _Optional[int] = ..., epochs_exported: _Optional[int] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("spec", "job_id")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    job_id: str
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., job_id: _Optional[str] = ...) -> None: ...

class CreateJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: JobStatus
    def __init__(self, job: _Optional[_Union[JobStatus, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: JobStatus
    def __init__(self, job: _Optional[_Union[JobStatus, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobStatus]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobStatus, _Mapping]]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: JobStatus
    def __init__(self, job: _Optional[_Union[JobStatus, _Mapping]] = ...) -> None: ...

class AcquireWorkRequest(_message.Message):
    __slots__ = ("worker_id", "device")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    device: str
    def __init__(self, worker_id: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class AcquireWorkResponse(_message.Message):
    __slots__ = ("has_work", "job_id", "spec", "ingest_addr", "ps_addrs")
    HAS_WORK_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    INGEST_ADDR_FIELD_NUMBER: _ClassVar[int]
    PS_ADDRS_FIELD_NUMBER: _ClassVar[int]
    has_work: bool
    job_id: str
    spec: JobSpec
    ingest_addr: str
    ps_addrs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, has_work: _Optional[bool] = ..., job_id: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., ingest_addr: _Optional[str] = ..., ps_addrs: _Optional[_Iterable[str]] = ...) -> None: ...

class ReportProgressRequest(_message.Message):
    __slots__ = ("job_id", "worker_id", "steps", "examples", "loss_sum")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOSS_SUM_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    worker_id: str
    steps: int
    examples: int
    loss_sum: float
    def __init__(self, job_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., steps: _Optional[int] = ..., examples: _Optional[int] = ..., loss_sum: _Optional[float] = ...) -> None: ...

class ReportProgressResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    def __init__(self, state: _Optional[_Union[JobState, str]] = ...) -> None: ...
