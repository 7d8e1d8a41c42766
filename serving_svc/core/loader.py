"""The loader: a SavedModel directory → a callable servable with every signature.

Calls go through the restored concrete functions, i.e. the SavedModel's
graph, never eager Keras code: that is what makes batch-1 requests cheap
(~0.3 ms per call on a small model here). The SignatureDefs themselves
(method names, tensor names, shapes) are read from `saved_model.pb`, as TF
Serving reports them in GetModelMetadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from mlmesh.errors import InvalidArgument
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from serving_svc.core.signature import (
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    STRING,
    InputSpec,
    SignatureSpec,
    pick_signature,
)

SIGNATURE_KEY = DEFAULT_SIGNATURE
SERVE_TAG = "serve"


class LoadError(Exception):
    """The version cannot be served; the message says why."""


class Servable:
    """One loaded model version with all its signatures.

    Thread-safe: calls may run concurrently from executor threads
    (TensorFlow functions are re-entrant); the object is immutable after load.
    `inputs`/`output_names`/`max_batch` describe "serving_default", the
    signature the batcher calls.
    """

    def __init__(
        self,
        model: str,
        version: int,
        path: Path,
        loaded: Any,
        functions: Mapping[str, Any],
        signatures: Mapping[str, SignatureSpec],
        signature_defs: Mapping[str, meta_graph_pb2.SignatureDef],
    ) -> None:
        self.model = model
        self.version = version
        self.path = path
        self._loaded = loaded  # owns the variables the functions read
        self._functions = dict(functions)
        self.signatures = dict(sorted(signatures.items()))
        self.signature_defs = dict(signature_defs)
        default = self.signatures[DEFAULT_SIGNATURE]
        self.inputs = dict(default.inputs)
        self.output_names = default.output_names

    @property
    def max_batch(self) -> int | None:
        """A fixed first dimension in the default signature caps (and fixes) the batch."""
        return self.signatures[DEFAULT_SIGNATURE].max_batch

    def signature(self, name: str = "") -> SignatureSpec:
        """The signature `name` ("" = serving_default); InvalidArgument names the ones there are."""
        return pick_signature(self.signatures, name, self.model)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run serving_default on arrays already validated against `inputs` (the batcher's call)."""
        return self.call(DEFAULT_SIGNATURE, batch)

    def call(self, signature: str, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one signature on arrays already validated against its inputs."""
        spec = self.signatures[signature or DEFAULT_SIGNATURE]
        try:
            result = self._functions[spec.name](**{name: tf.constant(arr) for name, arr in batch.items()})
        except tf.errors.InvalidArgumentError as e:
            # The model's own ops refused the values (e.g. an Example feature of the wrong
            # type): the client's input is at fault, as in TF Serving, not the server.
            raise InvalidArgument(f"signature {spec.name!r} rejected the input: {_op_message(e)}") from None
        return {name: result[name].numpy() for name in spec.output_names}

    def warm_up(self) -> None:
        """Synthetic warm-up: serving_default once on a zero batch, so the first
        request does not pay for graph initialisation; also proves outputs
        carry the batch dimension."""
        spec = self.signatures[DEFAULT_SIGNATURE]
        if any(s.shape is None for s in spec.inputs.values()):
            return  # no shape to build a zero batch from; the first request warms it
        size = spec.max_batch or 1
        batch: dict[str, np.ndarray] = {}
        for s in spec.inputs.values():
            per_example = tuple(1 if d is None else d for d in (s.shape or ())[1:])
            if s.dtype == STRING:
                batch[s.name] = np.full((size, *per_example), b"", dtype=object)
            else:
                batch[s.name] = np.zeros((size, *per_example), dtype=s.dtype)
        try:
            outputs = self(batch)
        except Exception as e:
            raise LoadError(f"warm-up call failed: {type(e).__name__}: {e}") from e
        check_batch_outputs(outputs, size)


def check_batch_outputs(outputs: Mapping[str, np.ndarray], size: int) -> None:
    for name, out in outputs.items():
        if out.ndim == 0 or out.shape[0] != size:
            raise LoadError(
                f"output {name!r} has shape {list(out.shape)} for a batch of {size}; "
                "serving needs outputs whose first dimension is the batch"
            )


def _tensor_spec(name: str, spec: Any, what: str) -> InputSpec:
    if isinstance(spec, tf.Tensor):  # TF1 SavedModels' signatures return symbolic tensors
        spec = tf.TensorSpec(spec.shape, spec.dtype)
    if not isinstance(spec, tf.TensorSpec):
        raise LoadError(f"{what} {name!r} is a {type(spec).__name__}; serving supports dense tensors only")
    if spec.dtype == tf.string:
        dtype = STRING
    elif not spec.dtype.is_numpy_compatible or spec.dtype in (tf.variant, tf.resource):
        raise LoadError(f"{what} {name!r} has dtype {spec.dtype.name}; serving supports numbers and strings")
    else:
        dtype = np.dtype(spec.dtype.as_numpy_dtype)
        if dtype.kind not in "biuf":
            raise LoadError(f"{what} {name!r} has dtype {dtype.name}; serving supports numbers and strings")
    shape = None if spec.shape.rank is None else tuple(spec.shape.as_list())
    if shape == () and what == "input":
        raise LoadError(f"input {name!r} is a scalar; serving needs a leading batch dimension")
    return InputSpec(name, dtype, shape)


def _signature_spec(key: str, fn: Any, method: str) -> SignatureSpec:
    args, kwargs = fn.structured_input_signature
    if args:
        raise LoadError(f"signature {key!r} has positional inputs; serving needs named inputs")
    if not kwargs:
        raise LoadError(f"signature {key!r} has no inputs")
    outputs = fn.structured_outputs
    if not isinstance(outputs, Mapping) or not outputs:
        raise LoadError(f"signature {key!r} must return a non-empty dict of outputs")
    try:
        return SignatureSpec(
            key,
            method,
            {name: _tensor_spec(name, spec, "input") for name, spec in sorted(kwargs.items())},
            {name: _tensor_spec(name, spec, "output") for name, spec in sorted(outputs.items())},
        )
    except LoadError as e:
        raise LoadError(f"signature {key!r}: {e}") from None


def read_signature_defs(path: Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs of the "serve" MetaGraph in `path/saved_model.pb`
    ({} if unreadable: tf.saved_model.load reports that better)."""
    try:
        saved = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    except Exception:
        return {}
    for meta_graph in saved.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags or len(saved.meta_graphs) == 1:
            return dict(meta_graph.signature_def)
    return {}


def load_servable(model: str, version: int, path: Path, *, warmup: bool = True) -> Servable:
    """Load `path` (blocking; seconds for a big model — run it in an executor).

    With `warmup`, replays `assets.extra/tf_serving_warmup_requests` when the
    version has one, else calls serving_default once with a zero batch.
    Raises LoadError with the reason when the directory is not a servable
    SavedModel (unreadable, no "serving_default", unsupported tensors, failed warm-up).
    """
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:
        raise LoadError(f"cannot load SavedModel at {path}: {type(e).__name__}: {e}") from e
    functions = dict(getattr(loaded, "signatures", {}))
    if SIGNATURE_KEY not in functions:
        raise LoadError(f"SavedModel at {path} has no {SIGNATURE_KEY!r} signature (has {sorted(functions)})")
    defs = read_signature_defs(path)
    specs = {
        key: _signature_spec(key, fn, defs[key].method_name if key in defs else PREDICT_METHOD)
        for key, fn in functions.items()
    }
    servable = Servable(model, version, path, loaded, functions, specs, defs)
    if warmup:
        from serving_svc.core.warmup import warm_up  # warmup imports this module

        warm_up(servable)
    return servable


def _op_message(error: tf.errors.OpError) -> str:
    """The op's own words, without TF's "Graph execution error" traceback and node suffix."""
    message = (error.message or str(error)).split("[[", 1)[0].strip()
    return message.splitlines()[-1].strip() if message else type(error).__name__
