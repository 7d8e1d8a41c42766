"""Building a job's model with TensorFlow, and what the trainer reads off it.

Imports TensorFlow: the coordinator imports this module lazily, the worker at
start. Keras keeps process-global state (layer name counters), so callers
serialize `build` with their other TensorFlow work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from mlmesh.errors import InvalidArgument
from mlmesh.model import ModelSpec, build_model

from trainer_svc.core import placement
from trainer_svc.core.spec import JobSpec
from trainer_svc.core.types import DatasetInfo, FeatureInfo


@dataclass(frozen=True)
class InputSpec:
    """What the model takes for one feature: dtype name and per-record shape (None = any)."""

    dtype: str
    shape: tuple[int | None, ...]


def configure_threads(threads: int) -> None:
    """Limit TensorFlow's CPU threads (0 keeps its default). Call before any TF op."""
    if threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def compute_device() -> str:
    """ "GPU:0" when TensorFlow sees a GPU (it then places compute there), else "CPU:0"."""
    return "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"


def build(spec: JobSpec) -> ModelSpec:
    """A fresh model for the job, initialized from `spec.seed`.

    Raises InvalidArgument naming the reason when the factory does not
    resolve, fails, or returns a model the trainer cannot train.
    """
    keras.backend.clear_session()  # same layer names in every process, however many builds came before
    keras.utils.set_random_seed(spec.seed)
    try:
        ms = build_model(spec.model, spec.model_args)
    except ValueError as e:
        raise InvalidArgument(str(e)) from e
    except Exception as e:  # the user's code: any failure is a bad spec
        raise InvalidArgument(f"model {spec.model!r} failed to build: {type(e).__name__}: {e}") from e
    check_model(spec.model, ms)
    return ms


def check_model(path: str, ms: ModelSpec) -> None:
    if not ms.features:
        raise InvalidArgument(f"model {path!r}: ModelSpec.features is empty")
    if not ms.label:
        raise InvalidArgument(f"model {path!r}: ModelSpec.label is empty")
    if ms.label in ms.features:
        raise InvalidArgument(f"model {path!r}: label {ms.label!r} is also a feature")
    if not getattr(ms.model, "built", False):
        raise InvalidArgument(f"model {path!r}: the Keras model is not built (give it an Input or build it)")
    trainable = ms.model.trainable_variables
    if not trainable:
        raise InvalidArgument(f"model {path!r} has no trainable variables")
    names = [v.path for v in trainable]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InvalidArgument(f"model {path!r}: variable paths {dupes} are not unique")
    # Only trainable variables live on the shards; float state such as
    # BatchNormalization statistics would silently diverge between processes.
    # Integer state (Dropout's seed generator) is per-process by design.
    trainable_ids = {id(v) for v in trainable}
    stateful = [
        v.path for v in ms.model.variables if id(v) not in trainable_ids and np.dtype(v.dtype).kind == "f"
    ]
    if stateful:
        raise InvalidArgument(
            f"model {path!r} has non-trainable float variables {stateful}; the parameter server holds only "
            "trainable variables (layers such as BatchNormalization are not supported)"
        )
    placement.check_sparse({v.path: np.zeros(v.shape) for v in trainable}, list(ms.sparse_variables))


def variable_values(ms: ModelSpec) -> dict[str, np.ndarray]:
    """The trainable variables by path, in model order, as NumPy arrays."""
    return {v.path: np.asarray(v.numpy()) for v in ms.model.trainable_variables}


def assign_values(ms: ModelSpec, values: Mapping[str, np.ndarray]) -> None:
    """Set every trainable variable from `values` (which must hold each, with its shape)."""
    for v in ms.model.trainable_variables:
        if v.path not in values:
            raise InvalidArgument(f"no value for variable {v.path!r}")
        value = values[v.path]
        if tuple(value.shape) != tuple(v.shape):
            raise InvalidArgument(
                f"variable {v.path!r} has shape {list(v.shape)} but got {list(value.shape)}"
            )
        v.assign(value)


def input_specs(ms: ModelSpec, schema: Mapping[str, FeatureInfo] | None = None) -> dict[str, InputSpec]:
    """Per feature, the dtype and shape the model takes.

    From the model's Keras inputs when it has them (matched by name, or the
    only input), else from `input_dtypes` and the dataset schema.
    """
    by_name: dict[str, Any] = {}
    inputs = list(getattr(ms.model, "inputs", None) or [])
    if len(ms.features) == 1 and len(inputs) == 1:
        by_name[ms.features[0]] = inputs[0]
    else:
        for t in inputs:
            by_name[getattr(t, "name", "")] = t
    out = {}
    for feature in ms.features:
        t = by_name.get(feature)
        if t is not None:
            dtype = ms.input_dtypes.get(feature) or np.dtype(t.dtype).name
            out[feature] = InputSpec(dtype, tuple(t.shape[1:]))
        elif schema is not None and feature in schema:
            info = schema[feature]
            out[feature] = InputSpec(ms.input_dtypes.get(feature, info.dtype), info.shape)
        else:
            raise InvalidArgument(
                f"cannot tell the input shape of feature {feature!r}: not a named model input"
            )
    return out


def check_dataset(ms: ModelSpec, dataset: DatasetInfo, field: str) -> None:
    """The dataset must hold the model's features (with compatible shapes) and label."""
    schema = dataset.features
    for name in [*ms.features, ms.label]:
        if name not in schema:
            raise InvalidArgument(
                f"{field} {dataset.name!r} has no feature {name!r} that the model needs; "
                f"its features are {sorted(schema)}"
            )
    for name, spec in input_specs(ms, schema).items():
        have = schema[name].shape
        if len(have) != len(spec.shape) or any(
            w is not None and w != h for w, h in zip(spec.shape, have, strict=True)
        ):
            raise InvalidArgument(
                f"{field} {dataset.name!r} feature {name!r} has shape {list(have)} but the model takes "
                f"{[d if d is not None else -1 for d in spec.shape]}"
            )


def model_inputs(ms: ModelSpec, features: Mapping[str, np.ndarray], specs: Mapping[str, InputSpec]) -> Any:
    """Features cast to the model's dtypes, in the structure the model is called with."""
    cast = {f: np.asarray(features[f], dtype=specs[f].dtype) for f in ms.features}
    return cast[ms.features[0]] if len(ms.features) == 1 else cast


def output_dict(model: Any, outputs: Any) -> dict[str, Any]:
    """Model outputs keyed by output layer name (what serving returns)."""
    if isinstance(outputs, Mapping):
        return dict(outputs)
    names = list(getattr(model, "output_names", None) or [])
    if isinstance(outputs, list | tuple):
        names = names if len(names) == len(outputs) else [f"output_{i}" for i in range(len(outputs))]
        return dict(zip(names, outputs, strict=True))
    return {names[0] if names else "output_0": outputs}
