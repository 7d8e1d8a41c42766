"""The worker's training step: parameters in, loss and gradients out (real TensorFlow)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from trainer_svc.core import tfmodel
from trainer_svc.core.spec import JobSpec
from trainer_svc.core.step import StepRunner

pytestmark = pytest.mark.unit

BASE = JobSpec(
    model="trainer_svc.tests.models:tiny", train_dataset="d", epochs=1, batch_size=8, model_name="m"
)


def runner(model: str) -> tuple[StepRunner, dict[str, np.ndarray]]:
    ms = tfmodel.build(dataclasses.replace(BASE, model=model))
    return StepRunner(ms, tfmodel.input_specs(ms)), tfmodel.variable_values(ms)


def test_sparse_step_reads_and_returns_only_the_batch_rows() -> None:
    r, values = runner("trainer_svc.tests.models:with_embedding")
    assert r.dense_names == ["value/kernel", "value/bias"] and r.sparse_names == ["emb/embeddings"]
    batch = {"ids": np.array([7, 3, 7, 3, 5]), "x": np.ones((5, 2), np.float32), "y": np.arange(5.0)}
    x = r.inputs(batch)
    rows = r.rows_needed(x)
    np.testing.assert_array_equal(rows["emb/embeddings"], [3, 5, 7])

    table = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    dense = {n: values[n] for n in r.dense_names}
    result = r.compute(dense, {"emb/embeddings": (rows["emb/embeddings"], table[[3, 5, 7]])}, x, batch["y"])

    # Reference: the same model with the whole table, plain GradientTape.
    ref, _ = runner("trainer_svc.tests.models:with_embedding")
    tfmodel.assign_values(ref.ms, {**dense, "emb/embeddings": table})
    with tf.GradientTape() as tape:
        loss = ref.ms.loss(batch["y"], ref.ms.model(x, training=True))
    grads = dict(
        zip(
            [v.path for v in ref.ms.model.trainable_variables],
            tape.gradient(loss, ref.ms.model.trainable_variables),
            strict=True,
        )
    )
    assert result.loss == pytest.approx(float(loss), rel=1e-5)
    got_rows, got = result.row_grads["emb/embeddings"]
    np.testing.assert_array_equal(got_rows, [3, 5, 7])
    np.testing.assert_allclose(
        got, tf.convert_to_tensor(grads["emb/embeddings"]).numpy()[[3, 5, 7]], rtol=1e-5
    )
    for name in r.dense_names:
        np.testing.assert_allclose(result.dense_grads[name], grads[name].numpy(), rtol=1e-5)


def test_out_of_range_ids_are_not_pulled() -> None:
    r, _ = runner("trainer_svc.tests.models:with_embedding")
    x = r.inputs({"ids": np.array([-1, 2, 10, 99]), "x": np.zeros((4, 2), np.float32)})
    np.testing.assert_array_equal(r.rows_needed(x)["emb/embeddings"], [2])


def test_gradient_steps_on_pulled_values_reduce_the_loss() -> None:
    r, values = runner("trainer_svc.tests.models:tiny")
    rng = np.random.default_rng(1)
    features = rng.normal(size=(64, 4)).astype(np.float32)
    labels = np.argmax(features[:, :3], axis=1)  # learnable: the largest of the first three
    x = r.inputs({"x": features})
    losses = []
    for _ in range(30):  # the caller (here: plain SGD) owns the parameters, as a shard would
        result = r.compute(values, {}, x, labels)
        losses.append(result.loss)
        values = {n: values[n] - 0.5 * result.dense_grads[n] for n in values}
    assert losses[-1] < 0.7 * losses[0]
