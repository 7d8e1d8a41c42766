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
        self._row_ids: dict[str, Callable[[Any], Any] | None] = {
            name: _row_id_model(ms, name) for name in sparse
        }
        self._step = tf.function(self._step_impl, reduce_retracing=True)

    def inputs(self, batch: Mapping[str, np.ndarray]) -> Any:
        return tfmodel.model_inputs(self.ms, batch, self.specs)

    def rows_needed(self, x: Any) -> dict[str, np.ndarray]:
        """Per sparse variable, the sorted unique rows this batch reads.

        Found by running the model's inputs through the layers that feed the
        embedding; a model without that structure reads every row.
        """
        out = {}
        for name, var in zip(self.sparse_names, self.sparse_vars, strict=True):
            num_rows = int(var.shape[0])
            fn = self._row_ids[name]
            if fn is None:
                out[name] = np.arange(num_rows, dtype=np.int64)
                continue
            ids = np.unique(np.asarray(fn(x)).astype(np.int64).ravel())
            out[name] = ids[(ids >= 0) & (ids < num_rows)]
        return out

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


def _row_id_model(ms: ModelSpec, name: str) -> Callable[[Any], Any] | None:
    """A function from model inputs to the ids the layer owning `name` looks up, if derivable."""
    owners = [
        layer
        for layer in ms.model._flatten_layers(include_self=False)
        if any(w.path == name for w in getattr(layer, "_trainable_variables", []))
    ]
    if len(owners) != 1:
        log.warning("sparse variable owner not found; pulling all its rows", variable=name)
        return None
    try:
        sub = keras.Model(ms.model.inputs, owners[0].input)
    except Exception as e:  # subclassed models, shared layers: no symbolic input to cut at
        log.warning("cannot derive the rows a batch reads; pulling all rows", variable=name, error=str(e))
        return None
    return tf.function(lambda x: sub(x, training=False), reduce_retracing=True)
