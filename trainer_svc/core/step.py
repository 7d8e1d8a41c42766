"""A worker's training step: set parameters, compute loss and gradients.

Imports TensorFlow. `StepRunner` is built once per job and is not
thread-safe: one thread calls `compute` at a time (it assigns into the
model's variables).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from mlmesh.logging import get_logger
from mlmesh.model import ModelSpec

from trainer_svc.core import tfmodel

log = get_logger(__name__)


@dataclass
class StepResult:
    loss: float
    dense_grads: dict[str, np.ndarray]
    # name -> (global row ids, gradient rows [len(rows), dim])
    row_grads: dict[str, tuple[np.ndarray, np.ndarray]]


class StepRunner:
    def __init__(self, ms: ModelSpec, specs: Mapping[str, tfmodel.InputSpec]) -> None:
        self.ms = ms
        self.specs = specs
        self.features = list(ms.features)
        self.label = ms.label
        sparse = list(ms.sparse_variables)
        variables = {v.path: v for v in ms.model.trainable_variables}
        self.dense_vars = [v for v in ms.model.trainable_variables if v.path not in sparse]
        self.dense_names = [v.path for v in self.dense_vars]
        self.sparse_names = sparse
        self.sparse_vars = [variables[name] for name in sparse]
        self._num_rows = {name: int(var.shape[0]) for name, var in zip(sparse, self.sparse_vars, strict=True)}
        self._row_sources = _row_sources(ms, sparse)
        self._step = tf.function(self._step_impl, reduce_retracing=True)

    def inputs(self, batch: Mapping[str, np.ndarray]) -> Any:
        return tfmodel.model_inputs(self.ms, batch, self.specs)

    def rows_needed(self, x: Any) -> dict[str, np.ndarray]:
        """Per sparse variable, the sorted unique rows this batch reads.

        Found by running the model's inputs through the layers that feed the
        embedding, once per distinct input tensor (tables looked up with the
        same ids share one call); a model without that structure reads every
        row.
        """
        out: dict[str, np.ndarray] = {}
        for source in self._row_sources:
            ids = None if source.ids is None else np.unique(np.asarray(source.ids(x)).astype(np.int64))
            for name in source.tables:
                n = self._num_rows[name]
                out[name] = np.arange(n, dtype=np.int64) if ids is None else ids[(ids >= 0) & (ids < n)]
        return {name: out[name] for name in self.sparse_names}

    def compute(
        self,
        dense: Mapping[str, np.ndarray],
        rows: Mapping[str, tuple[np.ndarray, np.ndarray]],
        x: Any,
        y: np.ndarray,
    ) -> StepResult:
        """Assign the pulled parameters, then return the loss and the gradients
        (dense ones whole, sparse ones for exactly the pulled rows)."""
        dense_values = [dense[name] for name in self.dense_names]
        row_ids = [rows[name][0] for name in self.sparse_names]
        row_values = [rows[name][1] for name in self.sparse_names]
        loss, dense_grads, sparse_grads = self._step(dense_values, row_ids, row_values, x, y)
        return StepResult(
            loss=float(loss),
            dense_grads={n: g.numpy() for n, g in zip(self.dense_names, dense_grads, strict=True)},
            row_grads={
                n: (r, g.numpy()) for n, r, g in zip(self.sparse_names, row_ids, sparse_grads, strict=True)
            },
        )

    def _step_impl(
        self, dense_values: list[Any], row_ids: list[Any], row_values: list[Any], x: Any, y: Any
    ) -> tuple[Any, list[Any], list[Any]]:
        for var, value in zip(self.dense_vars, dense_values, strict=True):
            var.assign(value)
        for var, ids, values in zip(self.sparse_vars, row_ids, row_values, strict=True):
            var.value.scatter_update(tf.IndexedSlices(values, ids))
        model = self.ms.model
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            loss = self.ms.loss(y, pred)
            if model.losses:
                loss = loss + tf.add_n(model.losses)
        grads = tape.gradient(
            loss, [*self.dense_vars, *self.sparse_vars], unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        n_dense = len(self.dense_vars)
        sparse_out = []
        for grad, ids in zip(grads[n_dense:], row_ids, strict=True):
            if isinstance(grad, tf.IndexedSlices):
                # Sum duplicate indices into one row each, in the order of `ids` (sorted).
                pos = tf.searchsorted(ids, tf.cast(grad.indices, tf.int64))
                sparse_out.append(tf.math.unsorted_segment_sum(grad.values, pos, tf.shape(ids)[0]))
            else:
                sparse_out.append(tf.gather(grad, ids))
        return loss, list(grads[:n_dense]), sparse_out


@dataclass(frozen=True)
class _RowSource:
    """Sparse tables whose owning layers read the same symbolic tensor, and a
    function from model inputs to that tensor (None: pull every row)."""

    tables: tuple[str, ...]
    ids: Callable[[Any], Any] | None


def _row_sources(ms: ModelSpec, names: list[str]) -> list[_RowSource]:
    """One source per distinct tensor the owners of `names` look up; a table whose
    owner or input cannot be found gets a source of its own that pulls all rows."""
    layers = list(ms.model._flatten_layers(include_self=False))
    fallback: list[str] = []
    # Keyed by the identity of the Keras tensors the owning layer reads: the same
    # tensor means the same ids, whatever the table.
    groups: dict[tuple[int, ...], tuple[Any, list[str]]] = {}
    for name in names:
        owners = [
            layer
            for layer in layers
            if any(w.path == name for w in getattr(layer, "_trainable_variables", []))
        ]
        if len(owners) != 1:
            log.warning("sparse variable owner not found; pulling all its rows", variable=name)
            fallback.append(name)
            continue
        calls = len(owners[0]._inbound_nodes)
        if calls > 1:
            # Keras answers `.input` with the first call's input only: the rows the
            # other calls read would be missing from the pull.
            log.warning(
                "sparse variable is looked up by several calls; pulling all its rows",
                variable=name,
                calls=calls,
            )
            fallback.append(name)
            continue
        try:
            tensor = owners[0].input
        except Exception as e:  # subclassed models: no symbolic input to cut at
            log.warning("cannot derive the rows a batch reads; pulling all rows", variable=name, error=str(e))
            fallback.append(name)
            continue
        key = tuple(id(t) for t in tf.nest.flatten(tensor))
        groups.setdefault(key, (tensor, []))[1].append(name)
    sources = [_RowSource(tuple(fallback), None)] if fallback else []
    for tensor, tables in groups.values():
        try:
            sub = keras.Model(ms.model.inputs, tensor)
        except Exception as e:  # a tensor the model's inputs do not lead to
            log.warning(
                "cannot derive the rows a batch reads; pulling all rows", variables=tables, error=str(e)
            )
            sources.append(_RowSource(tuple(tables), None))
            continue
        sources.append(_RowSource(tuple(tables), _sub_model_fn(sub)))
    return sources


def _sub_model_fn(sub: Any) -> Callable[[Any], Any]:
    # A function of its own, so each source's closure holds its own sub-model.
    return tf.function(lambda x: sub(x, training=False), reduce_retracing=True)
