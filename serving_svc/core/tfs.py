"""TensorFlow Serving's request semantics over the manager, shared by its gRPC API and the REST methods.

No grpc and no wire format here: servicers turn protos/JSON into arrays,
call these, and turn the answers back. Predict on serving_default goes
through the version's batcher (so batching and de-duplication apply); other
signatures, classify and regress run as their own call on a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
from mlmesh.errors import FailedPrecondition, InvalidArgument, NotFound

from serving_svc.core.loader import Servable
from serving_svc.core.manager import ModelManager, ModelVersion, VersionState
from serving_svc.core.model_config import ModelConfigError
from serving_svc.core.signature import (
    CLASSES_OUTPUT,
    DEFAULT_SIGNATURE,
    EXAMPLES_INPUT,
    REGRESS_OUTPUT,
    SCORES_OUTPUT,
    SignatureSpec,
)
from serving_svc.core.source import ConfigFileSource


def lease(
    manager: ModelManager, model: str, version: int = 0, label: str = ""
) -> AbstractContextManager[ModelVersion]:
    """Hold the version a TF Serving ModelSpec names (version, label, or the newest)."""
    if not model:
        raise InvalidArgument("model_spec.name is empty")
    if version < 0:
        raise InvalidArgument(f"version is {version}; expected a positive version (or none for the newest)")
    return manager.lease(model, version, label)


def servable_of(record: ModelVersion) -> Servable:
    servable = record.servable
    assert servable is not None  # guaranteed while leased
    return servable


async def run(
    record: ModelVersion, signature: SignatureSpec, arrays: Mapping[str, np.ndarray], n: int
) -> dict[str, np.ndarray]:
    """Outputs of one validated request: serving_default through the batcher, others directly."""
    servable = servable_of(record)
    if signature.name == DEFAULT_SIGNATURE and record.batcher is not None:
        return await record.batcher.submit(arrays, n)
    return await asyncio.to_thread(servable.call, signature.name, arrays)


def select_outputs(signature: SignatureSpec, output_filter: Sequence[str]) -> list[str]:
    """The outputs to return (all when the filter is empty); InvalidArgument names unknown ones."""
    if not output_filter:
        return signature.output_names
    unknown = sorted(set(output_filter) - set(signature.outputs))
    if unknown:
        raise InvalidArgument(
            f"output tensor alias not found in signature {signature.name!r}: {unknown}; "
            f"outputs are {signature.output_names}"
        )
    if len(set(output_filter)) != len(output_filter):
        raise InvalidArgument(f"output_filter {list(output_filter)} names an output twice")
    return sorted(output_filter)


def examples_signature(servable: Servable, name: str, method: str) -> SignatureSpec:
    """The classify/regress signature `name`; InvalidArgument if it has another method."""
    signature = servable.signature(name)
    if signature.method != method:
        raise InvalidArgument(
            f"signature {signature.name!r} of model {servable.model!r} has method {signature.method!r}, "
            f"expected {method!r}"
        )
    if set(signature.inputs) != {EXAMPLES_INPUT}:
        raise InvalidArgument(
            f"signature {signature.name!r} takes {sorted(signature.inputs)}, not one {EXAMPLES_INPUT!r} input"
        )
    return signature


async def run_examples(
    record: ModelVersion, signature: SignatureSpec, examples: np.ndarray
) -> dict[str, np.ndarray]:
    return await asyncio.to_thread(servable_of(record).call, signature.name, {EXAMPLES_INPUT: examples})


@dataclass(frozen=True)
class ClassResult:
    label: str
    score: float


def classifications(outputs: Mapping[str, np.ndarray], n: int) -> list[list[ClassResult]]:
    """Per example, its (label, score) pairs from the "classes" and/or "scores" outputs."""
    classes = outputs.get(CLASSES_OUTPUT)
    scores = outputs.get(SCORES_OUTPUT)
    if classes is None and scores is None:
        raise InvalidArgument(
            f"classify signature has neither {CLASSES_OUTPUT!r} nor {SCORES_OUTPUT!r} output"
        )
    width = (classes if classes is not None else scores).reshape(n, -1).shape[1]  # type: ignore[union-attr]
    labels = classes.reshape(n, -1) if classes is not None else None
    values = scores.reshape(n, -1) if scores is not None else None
    if labels is not None and values is not None and labels.shape != values.shape:
        raise InvalidArgument(
            f"classes {list(labels.shape)} and scores {list(values.shape)} disagree in shape"
        )
    out: list[list[ClassResult]] = []
    for i in range(n):
        row = []
        for j in range(width):
            label = labels[i, j] if labels is not None else b""
            text = label.decode(errors="replace") if isinstance(label, bytes) else str(label)
            row.append(ClassResult(text, float(values[i, j]) if values is not None else 0.0))
        out.append(row)
    return out


def regressions(outputs: Mapping[str, np.ndarray], n: int) -> list[float]:
    """One value per example from the "outputs" output ([n] or [n,1])."""
    values = outputs.get(REGRESS_OUTPUT)
    if values is None:
        raise InvalidArgument(f"regress signature has no {REGRESS_OUTPUT!r} output")
    if values.size != n:
        raise InvalidArgument(
            f"regress output has shape {list(values.shape)}; expected one value per example ({n})"
        )
    return [float(v) for v in values.reshape(n)]


# tensorflow.error.Code names (the same as gRPC's status codes).
ERROR_CODES = frozenset(
    [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ]
)


def _error_code(code: str) -> str:
    if not code:
        return "OK"
    return code if code in ERROR_CODES else "UNKNOWN"


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END (TF Serving's ModelVersionStatus.State)
    error_code: str  # tensorflow.error.Code name, "OK" unless the version ended on an error
    error_message: str


def version_statuses(
    manager: ModelManager, model: str, version: int = 0, label: str = ""
) -> list[VersionStatus]:
    """TF Serving's GetModelStatus: every version (newest first), or the one a version/label names.
    NotFound for an unknown model, version or label."""
    if not model:
        raise InvalidArgument("model_spec.name is empty")
    if version < 0:
        raise InvalidArgument(f"version is {version}; expected a positive version (or none for all)")
    records = manager.status(model)
    if label:
        labels = manager.labels(model)
        if label not in labels:
            raise NotFound(
                f"model {model!r} has no version label {label!r}; labels: {sorted(labels) or 'none'}"
            )
        version = labels[label]
    if version:
        records = [r for r in records if r.version == version]
        if not records:
            raise NotFound(
                f"model {model!r} has no version {version}; "
                f"versions: {[r.version for r in manager.status(model)]}"
            )
    return [
        VersionStatus(r.version, r.state.value, _error_code(r.error_code), r.error if r.error_code else "")
        for r in records
    ]


ORIGIN = "ReloadConfigRequest.config"  # how validation errors name the config they refuse


@dataclass(frozen=True)
class ReloadOutcome:
    """What HandleReloadConfigRequest answers: OK, or the first model that has nothing to serve."""

    error_code: str  # tensorflow.error.Code name
    error_message: str


async def reload_config(manager: ModelManager, config_text: str) -> ReloadOutcome:
    """TF Serving's HandleReloadConfigRequest: take a new ModelServerConfig (text format) and
    wait for the loads it starts. A config that does not validate changes nothing
    (InvalidArgument); one that validates is written over the model-config file, so the
    replicas watching the file follow. A model left with no AVAILABLE version is reported in
    the outcome (the config stays: its status shows in GetModelStatus, as TF Serving does)."""
    source = manager.source
    if not isinstance(source, ConfigFileSource):
        raise FailedPrecondition(
            "this server serves a model repository (--model-repo); start it with --model-config-file "
            "to change its models with HandleReloadConfigRequest"
        )
    try:
        models = await manager.change_source(lambda: source.replace(config_text, ORIGIN))
    except ModelConfigError as e:
        raise InvalidArgument(str(e)) from None
    for model in models:
        records = manager.status(model.name)
        if any(r.state is VersionState.AVAILABLE for r in records):
            continue
        failed = next((r for r in records if r.failed), None)
        if failed is not None:
            message = f"model {model.name!r} version {failed.version}: {failed.error}"
            return ReloadOutcome(_error_code(failed.error_code), message)
        states = ", ".join(f"{r.version}: {r.state.value}" for r in records) or "none found"
        return ReloadOutcome(
            "UNAVAILABLE",
            f"model {model.name!r} has no AVAILABLE version under {model.base_path} (versions: {states})",
        )
    return ReloadOutcome("OK", "")
