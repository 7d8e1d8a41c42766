"""Thin synchronous clients over the mlmesh gRPC APIs and the gateway's HTTP API.

Used by the `mlmesh` CLI, the supervisor and the end-to-end tests, never by a
service (services talk through their own stubs). Each client owns one channel;
a client is safe to share between threads (gRPC channels are), and `close()`
(or a `with` block) releases it. Errors are the `grpc.RpcError`s of the
underlying calls; `rpc_error_text` renders one for humans.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import grpc
import numpy as np
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mlmesh import records, sources, tensor
from mlmesh.channels import sync_channel
from mlmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from mlmesh.paramserver.v1 import paramserver_pb2
from mlmesh.serving.v1 import serving_pb2, serving_pb2_grpc
from mlmesh.trainer.v1 import trainer_pb2, trainer_pb2_grpc

APPEND_BATCH_BYTES = 1 << 20
# Sent as the last message of an Append stream the client gives up on: not a valid dataset
# name, so the server refuses the stream (and keeps nothing of it) whatever it read before.
ABORT_DATASET = "(client aborted the stream)"
SERVING_SERVICE = "mlmesh.serving.v1.ServingService"


def rpc_error_text(err: grpc.RpcError) -> str:
    """'NOT_FOUND: dataset 'x' does not exist' from a failed call."""
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    return f"{code.name if code else 'UNKNOWN'}: {details}"


# --- health ---------------------------------------------------------------


def check_health(addr: str, service: str = "", timeout: float = 2.0) -> str:
    """The serving status name ('SERVING', 'NOT_SERVING', ...) or 'UNREACHABLE' / a status code name."""
    with sync_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            code = e.code()  # type: ignore[attr-defined]
            return "UNREACHABLE" if code == grpc.StatusCode.UNAVAILABLE else code.name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def wait_serving(addr: str, service: str = "", timeout: float = 30.0, interval: float = 0.2) -> None:
    """Block until `addr` reports SERVING for `service`; TimeoutError with the last status."""
    deadline = time.monotonic() + timeout
    last = "UNREACHABLE"
    while time.monotonic() < deadline:
        last = check_health(addr, service, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
        if last == "SERVING":
            return
        time.sleep(interval)
    raise TimeoutError(f"{addr} did not report SERVING for {service!r} within {timeout:.0f}s (last: {last})")


class _Client:
    def __init__(self, addr: str, timeout: float = 30.0) -> None:
        self.addr = addr
        self.timeout = timeout
        self._channel = sync_channel(addr)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --- ingest ---------------------------------------------------------------


def schema_of(arrays: Mapping[str, np.ndarray]) -> ingest_pb2.DatasetSchema:
    """Schema whose features are the arrays (first axis = records), sorted by name."""
    features = []
    for name in sorted(arrays):
        arr = np.asarray(arrays[name])
        if arr.ndim == 0:
            raise ValueError(f"feature {name!r} is a scalar; expected an array with one entry per record")
        features.append(
            ingest_pb2.FeatureSpec(name=name, dtype=tensor.dtype_code(arr.dtype), shape=list(arr.shape[1:]))
        )
    return ingest_pb2.DatasetSchema(features=features)


def num_records(arrays: Mapping[str, np.ndarray]) -> int:
    """Records in column arrays; ValueError if the columns disagree."""
    counts = {name: len(a) for name, a in arrays.items()}
    if not counts:
        raise ValueError("no features given")
    if len(set(counts.values())) != 1:
        raise ValueError(f"features have different record counts: {counts}")
    return next(iter(counts.values()))


def record_batches(
    arrays: Mapping[str, np.ndarray], target_bytes: int = APPEND_BATCH_BYTES
) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive column slices of about `target_bytes` each (at least one record)."""
    n = num_records(arrays)
    per_record = sum(np.asarray(a)[:1].nbytes for a in arrays.values()) or 1
    step = max(1, target_bytes // per_record)
    for start in range(0, n, step):
        yield {name: np.asarray(a)[start : start + step] for name, a in arrays.items()}


def schema_to_proto(schema: sources.Schema) -> ingest_pb2.DatasetSchema:
    return ingest_pb2.DatasetSchema(
        features=[
            ingest_pb2.FeatureSpec(name=c.name, dtype=tensor.dtype_code(c.dtype), shape=list(c.shape))
            for c in schema.columns
        ]
    )


def schema_from_proto(proto: ingest_pb2.DatasetSchema) -> sources.Schema:
    return sources.Schema(
        tuple(
            sources.Column(f.name, tensor.dtype_name(f.dtype), tuple(int(d) for d in f.shape))
            for f in proto.features
        )
    )


class IngestClient(_Client):
    def __init__(self, addr: str, timeout: float = 30.0) -> None:
        super().__init__(addr, timeout)
        self.stub = ingest_pb2_grpc.IngestServiceStub(self._channel)
        # Append's batches are framed by hand (`mlmesh.records.encode_append`): one copy of
        # each column into the message instead of the generated classes' three.
        self._append_raw = self._channel.stream_unary(
            "/mlmesh.ingest.v1.IngestService/Append",
            request_serializer=None,
            response_deserializer=ingest_pb2.AppendResponse.FromString,
        )

    def create_dataset(
        self,
        name: str,
        schema: ingest_pb2.DatasetSchema | sources.Schema,
        max_partition_bytes: int = 0,
    ) -> ingest_pb2.CreateDatasetResponse:
        if isinstance(schema, sources.Schema):
            schema = schema_to_proto(schema)
        req = ingest_pb2.CreateDatasetRequest(
            name=name, schema=schema, max_partition_bytes=max_partition_bytes
        )
        return self.stub.CreateDataset(req, timeout=self.timeout)

    def get_dataset(self, name: str) -> ingest_pb2.Dataset | None:
        """The dataset, or None when it does not exist."""
        try:
            return self.stub.GetDataset(ingest_pb2.GetDatasetRequest(name=name), timeout=self.timeout).dataset
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                return None
            raise

    def list_datasets(self) -> list[ingest_pb2.Dataset]:
        return list(self.stub.ListDatasets(ingest_pb2.ListDatasetsRequest(), timeout=self.timeout).datasets)

    def append(
        self,
        dataset: str,
        batches: Iterable[Mapping[str, np.ndarray]],
        timeout: float | None = 600.0,
        schema: sources.Schema | None = None,
    ) -> ingest_pb2.AppendResponse:
        """Stream the batches in one Append call (all-or-nothing on the server).

        Every batch is checked against `schema` (by default the dataset's, fetched
        first) before it is sent, and cast where that loses nothing. A batch that
        does not fit, or any exception the batches raise, cancels the stream - so
        the server keeps nothing of it - and is re-raised here as itself
        (`sources.SchemaError` names the column and record), not as gRPC's
        "Exception iterating requests!". An empty `batches` appends nothing.
        """
        if schema is None:
            known = self.get_dataset(dataset)
            # Unknown: send unchecked, and the server answers NOT_FOUND.
            schema = None if known is None else schema_from_proto(known.schema)
        failure: list[BaseException] = []
        interrupted = threading.Event()

        def requests() -> Iterator[bytes]:
            # The first message names the dataset alone, so an empty source is a valid stream.
            yield ingest_pb2.AppendRequest(dataset=dataset).SerializeToString()
            start = 0
            try:
                for batch in batches:
                    if interrupted.is_set():
                        raise KeyboardInterrupt
                    if schema is not None:
                        batch = schema.conform(batch, start)
                    n = num_records(batch) if batch else 0
                    if n:
                        yield records.encode_append(batch)
                    start += n
            except GeneratorExit:  # gRPC closes the iterator once the call ended (e.g. NOT_FOUND)
                raise
            except BaseException as e:
                # gRPC consumes this iterator in its own thread and would swallow the exception
                # and cancel the call - which the server may read as a clean end of the stream,
                # and commit. A message the server must refuse makes it abort the stream for sure.
                failure.append(e)
                yield ingest_pb2.AppendRequest(dataset=ABORT_DATASET).SerializeToString()

        future = self._append_raw.future(requests(), timeout=timeout)
        try:
            resp = future.result()
        except KeyboardInterrupt:
            # Ctrl-C while streaming: abort the stream (above) before the process goes.
            interrupted.set()
            with contextlib.suppress(grpc.RpcError, grpc.FutureTimeoutError):
                future.result(timeout=5)
            raise
        except grpc.RpcError:
            if failure:
                raise failure[0] from None
            raise
        if failure:  # the server answered before it read the abort message
            raise failure[0]
        return resp  # type: ignore[no-any-return]


# --- trainer --------------------------------------------------------------

TERMINAL_JOB_STATES = frozenset(
    {trainer_pb2.JOB_STATE_SUCCEEDED, trainer_pb2.JOB_STATE_FAILED, trainer_pb2.JOB_STATE_CANCELLED}
)


def job_state_name(state: int) -> str:
    """'RUNNING' for JOB_STATE_RUNNING."""
    return trainer_pb2.JobState.Name(state).removeprefix("JOB_STATE_")


def job_spec(
    *,
    model: str,
    train_dataset: str,
    eval_dataset: str = "",
    epochs: int = 1,
    batch_size: int = 64,
    optimizer: str = "adam",
    learning_rate: float = 1e-3,
    model_name: str = "",
    model_args: Mapping[str, str] | None = None,
    seed: int = 0,
    eval_max_records: int = 0,
    consistency: str = "async",
    skip_nonfinite_pushes: bool = False,
    continuous: bool = False,
    window_hours: float = 0.0,
    exactly_once: bool = False,
) -> trainer_pb2.JobSpec:
    return trainer_pb2.JobSpec(
        model=model,
        model_args=dict(model_args or {}),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        epochs=epochs,
        batch_size=batch_size,
        optimizer=paramserver_pb2.OptimizerSpec(
            kind=optimizer, learning_rate=learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-7
        ),
        model_name=model_name,
        seed=seed,
        eval_max_records=eval_max_records,
        consistency=consistency,
        skip_nonfinite_pushes=skip_nonfinite_pushes,
        continuous=continuous,
        window_hours=window_hours,
        exactly_once=exactly_once,
    )


class TrainerClient(_Client):
    def __init__(self, addr: str, timeout: float = 30.0) -> None:
        super().__init__(addr, timeout)
        self.stub = trainer_pb2_grpc.TrainerServiceStub(self._channel)

    def create_job(self, spec: trainer_pb2.JobSpec, job_id: str = "") -> trainer_pb2.JobStatus:
        return self.stub.CreateJob(
            trainer_pb2.CreateJobRequest(spec=spec, job_id=job_id), timeout=self.timeout
        ).job

    def get_job(self, job_id: str) -> trainer_pb2.JobStatus:
        return self.stub.GetJob(trainer_pb2.GetJobRequest(job_id=job_id), timeout=self.timeout).job

    def list_jobs(self) -> list[trainer_pb2.JobStatus]:
        return list(self.stub.ListJobs(trainer_pb2.ListJobsRequest(), timeout=self.timeout).jobs)

    def cancel_job(self, job_id: str) -> trainer_pb2.JobStatus:
        return self.stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=job_id), timeout=self.timeout).job


# --- serving --------------------------------------------------------------


def version_state_name(state: int) -> str:
    return serving_pb2.ModelVersionState.Name(state).removeprefix("MODEL_VERSION_STATE_")


def first_output(outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The output serving's JSON `predictions` carry: first in sorted-name order."""
    if not outputs:
        raise ValueError("the response has no outputs")
    return outputs[sorted(outputs)[0]]


class ServingClient(_Client):
    """Talks to a serving replica, or to the gateway's gRPC side (same API)."""

    def __init__(self, addr: str, timeout: float = 30.0) -> None:
        super().__init__(addr, timeout)
        self.stub = serving_pb2_grpc.ServingServiceStub(self._channel)

    def predict(
        self,
        model_name: str,
        inputs: Mapping[str, np.ndarray],
        version: int = 0,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> tuple[int, dict[str, np.ndarray]]:
        """(version that answered, outputs by name) for tensor inputs."""
        req = serving_pb2.PredictRequest(
            model_name=model_name, version=version, inputs=tensor.map_to_proto(inputs)
        )
        resp = self.stub.Predict(req, timeout=self.timeout, metadata=metadata)
        return resp.version, {k: np.array(v) for k, v in tensor.map_from_proto(resp.outputs).items()}

    def predict_instances(
        self, model_name: str, instances: list[Any], version: int = 0
    ) -> tuple[int, list[Any]]:
        """(version, predictions) for JSON-style instances sent over gRPC."""
        lv = struct_pb2.ListValue()
        lv.extend(instances)
        req = serving_pb2.PredictRequest(model_name=model_name, version=version, instances=lv)
        resp = self.stub.Predict(req, timeout=self.timeout)
        return resp.version, json_format.MessageToDict(resp.predictions)  # type: ignore[return-value]

    def model_status(self, model_name: str) -> list[serving_pb2.ModelVersionStatus]:
        req = serving_pb2.GetModelStatusRequest(model_name=model_name)
        return list(self.stub.GetModelStatus(req, timeout=self.timeout).versions)


# --- gateway HTTP ---------------------------------------------------------


class HttpError(RuntimeError):
    """A non-2xx answer; carries the status and the body."""

    def __init__(self, status: int, body: str, url: str) -> None:
        super().__init__(f"HTTP {status} from {url}: {body[:500]}")
        self.status = status
        self.body = body


def http_json(
    method: str,
    url: str,
    body: Any = None,
    timeout: float = 30.0,
    headers: Mapping[str, str] | None = None,
) -> Any:
    """Send JSON, parse the JSON answer; HttpError on a non-2xx status."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        raise HttpError(e.code, e.read().decode(errors="replace"), url) from None
    return json.loads(raw) if raw else None


def http_predict(
    http_addr: str, model_name: str, instances: list[Any], timeout: float = 30.0, version: int = 0
) -> Any:
    """POST /v1/models/<name>[/versions/<v>]:predict through the gateway; the parsed JSON answer."""
    path = f"/v1/models/{model_name}" + (f"/versions/{version}" if version else "")
    return http_json("POST", f"http://{http_addr}{path}:predict", {"instances": instances}, timeout)


def http_newest_available(http_addr: str, model_name: str, timeout: float = 10.0) -> int:
    """The newest AVAILABLE version in TF Serving's status JSON (GET /v1/models/<name>); 0 if none."""
    status = http_model_status(http_addr, model_name, timeout)
    versions = [
        int(v.get("version", 0))
        for v in (status.get("model_version_status", []) if isinstance(status, dict) else [])
        if v.get("state") == "AVAILABLE"
    ]
    return max(versions, default=0)


def http_model_status(http_addr: str, model_name: str, timeout: float = 10.0) -> Any:
    return http_json("GET", f"http://{http_addr}/v1/models/{model_name}", timeout=timeout)
