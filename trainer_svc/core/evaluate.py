"""Evaluating a model on batches streamed from a dataset.

Not thread-safe: one `Evaluator` is fed from one thread at a time.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf
from mlmesh.model import ModelSpec

from trainer_svc.core import tfmodel
from trainer_svc.core.batching import iter_slices


class Evaluator:
    """Accumulates the loss (example-weighted mean) and the model's metrics."""

    def __init__(self, ms: ModelSpec, specs: Mapping[str, tfmodel.InputSpec], batch_size: int) -> None:
        self.ms = ms
        self.specs = specs
        self.batch_size = batch_size
        self.metrics = [factory() for factory in ms.metrics]
        self.loss_sum = 0.0
        self.count = 0
        model = ms.model
        self._predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def update(self, columns: Mapping[str, np.ndarray]) -> None:
        n = len(columns[self.ms.label])
        for start, stop in iter_slices(n, self.batch_size):
            batch = {k: v[start:stop] for k, v in columns.items()}
            x = tfmodel.model_inputs(self.ms, batch, self.specs)
            y = batch[self.ms.label]
            pred = self._predict(x)
            self.loss_sum += float(self.ms.loss(y, pred)) * (stop - start)
            self.count += stop - start
            for metric in self.metrics:
                metric.update_state(y, pred)

    def result(self) -> dict[str, float]:
        """{"loss": mean loss, <metric name>: value, ...}; empty when nothing was seen."""
        if not self.count:
            return {}
        out = {"loss": self.loss_sum / self.count}
        for metric in self.metrics:
            out[metric.name] = float(metric.result())
        return out
