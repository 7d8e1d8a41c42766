"""The interface between a user's model and mlmesh's trainer.

A job names a factory by import path, "package.module:function". The trainer
calls it (with the job's `model_args` as string keyword arguments) in the
coordinator and in every worker, so it must be deterministic in structure:
the same variables, in the same order, with the same shapes.

    def build(**args: str) -> ModelSpec: ...

TensorFlow is imported by the factory, never by this module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelSpec:
    """A built Keras model and how to feed it from a dataset.

    model: a built `keras.Model` whose inputs are the dataset features named
        in `features` (one input: the tensor itself; several: a dict by name).
        Preprocessing (scaling, casting) belongs inside the model, so the
        exported SavedModel takes raw features and serving needs no extra code.
    loss: a Keras loss object or callable(y_true, y_pred) -> scalar.
    features: dataset feature names that are model inputs.
    label: dataset feature name of the target.
    metrics: factories of Keras metrics used in evaluation (called fresh each time).
    input_dtypes: dtype the model expects per feature ("float32"); raw features
        are cast to it before the model sees them.
    sparse_variables: names of embedding tables (2-D variables) that the shards
        keep row-sharded; workers pull and push only the rows a batch touches.
    """

    model: Any
    loss: Any
    features: Sequence[str]
    label: str
    metrics: Sequence[Callable[[], Any]] = field(default_factory=list)
    input_dtypes: Mapping[str, str] = field(default_factory=dict)
    sparse_variables: Sequence[str] = field(default_factory=list)


def load_factory(path: str) -> Callable[..., ModelSpec]:
    """Resolve "package.module:function"; ValueError names what is wrong."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"model {path!r} is not of the form 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"model {path!r}: cannot import module {module_name!r}: {e}") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"model {path!r}: module {module_name!r} has no callable {attr!r}")
    return factory  # type: ignore[no-any-return]


def build_model(path: str, args: Mapping[str, str] | None = None) -> ModelSpec:
    spec = load_factory(path)(**dict(args or {}))
    if not isinstance(spec, ModelSpec):
        raise ValueError(f"model {path!r} returned {type(spec).__name__}, expected mlmesh.model.ModelSpec")
    return spec
