"""Update rules against hand-computed values and against Keras' own optimizers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from paramserver_svc.core.specs import OptimizerConfig
from paramserver_svc.core.update_rules import make_rule

pytestmark = pytest.mark.unit


def reference(kind: str, lr: float, w: list[float], grads: list[list[float]]) -> list[float]:
    """The textbook formulas, one scalar at a time in float64 (Keras' variants: Adam with
    epsilon-hat, Adagrad starting its accumulator at 0.1)."""
    b1, b2, eps = 0.9, 0.999, 1e-7
    out = []
    for i, w0 in enumerate(w):
        x, m, v, acc = w0, 0.0, 0.0, 0.1
        for t, g in enumerate((gs[i] for gs in grads), start=1):
            if kind == "sgd":
                x -= lr * g
            elif kind == "adagrad":
                acc += g * g
                x -= lr * g / math.sqrt(acc + eps)
            else:
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g * g
                x -= lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (math.sqrt(v) + eps)
        out.append(x)
    return out


def test_sgd_subtracts_learning_rate_times_gradient() -> None:
    rule = make_rule(OptimizerConfig.parse("sgd", 0.1))
    w = np.array([1.0, 2.0], dtype=np.float32)
    w = rule.apply_dense(w, rule.init_slots(w), np.array([0.5, -1.0], dtype=np.float32), 1)
    np.testing.assert_allclose(w, [0.95, 2.1], rtol=1e-6)


def test_adagrad_first_step_by_hand() -> None:
    rule = make_rule(OptimizerConfig.parse("adagrad", 0.1))
    w = np.array([1.0], dtype=np.float32)
    slots = rule.init_slots(w)
    w = rule.apply_dense(w, slots, np.array([1.0], dtype=np.float32), 1)
    # accumulator 0.1 + 1 = 1.1; step 0.1 * 1 / sqrt(1.1)
    np.testing.assert_allclose(slots["accumulator"], [1.1], rtol=1e-6)
    np.testing.assert_allclose(w, [1.0 - 0.1 / math.sqrt(1.1 + 1e-7)], rtol=1e-6)


def test_adam_first_step_moves_by_learning_rate_times_sign() -> None:
    rule = make_rule(OptimizerConfig.parse("adam", 0.01))
    w = np.array([1.0, 1.0], dtype=np.float32)
    slots = rule.init_slots(w)
    w = rule.apply_dense(w, slots, np.array([3.0, -0.5], dtype=np.float32), 1)
    # t=1: m = 0.1 g, v = 0.001 g^2, alpha = lr*sqrt(0.001)/0.1, so the step is lr * g/|g| (up to eps)
    np.testing.assert_allclose(slots["m"], [0.3, -0.05], rtol=1e-6)
    np.testing.assert_allclose(slots["v"], [0.009, 0.00025], rtol=1e-5)
    np.testing.assert_allclose(w, [0.99, 1.01], rtol=1e-5)


@pytest.mark.parametrize("kind", ["sgd", "adam", "adagrad"])
def test_dense_updates_match_reference_over_several_steps(kind: str) -> None:
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=6)
    grads = rng.normal(size=(4, 6))
    rule = make_rule(OptimizerConfig.parse(kind, 0.05))
    w = w0.astype(np.float64)
    slots = rule.init_slots(w)
    for t, g in enumerate(grads, start=1):
        w = rule.apply_dense(w, slots, g, t)
    np.testing.assert_allclose(w, reference(kind, 0.05, list(w0), grads.tolist()), rtol=1e-10)


@pytest.mark.parametrize("kind", ["sgd", "adam", "adagrad"])
def test_row_updates_touch_only_their_rows_and_match_reference(kind: str) -> None:
    rule = make_rule(OptimizerConfig.parse(kind, 0.1))
    table = np.arange(8, dtype=np.float64).reshape(4, 2)
    before = table.copy()
    slots = rule.init_slots(table)
    start = {k: s.copy() for k, s in slots.items()}
    idx = np.array([2, 0])
    grads = [np.array([[1.0, -2.0], [0.5, 0.25]]), np.array([[-1.0, 1.0], [2.0, 2.0]])]
    for t, g in enumerate(grads, start=1):
        rule.apply_rows(table, slots, idx, g, t)
    for pos, row in enumerate(idx):
        expected = reference(kind, 0.1, list(before[row]), [g[pos].tolist() for g in grads])
        np.testing.assert_allclose(table[row], expected, rtol=1e-10)
    for row in (1, 3):  # lazy: untouched rows keep value and slots
        np.testing.assert_array_equal(table[row], before[row])
        for k in slots:
            np.testing.assert_array_equal(slots[k][row], start[k][row])


def test_float16_variables_compute_in_float32_and_keep_their_dtype() -> None:
    rule = make_rule(OptimizerConfig.parse("adam", 0.01))
    w = np.ones(3, dtype=np.float16)
    slots = rule.init_slots(w)
    assert slots["m"].dtype == np.float32
    w = rule.apply_dense(w, slots, np.full(3, 0.5, dtype=np.float16), 1)
    assert w.dtype == np.float16
    np.testing.assert_allclose(w, 0.99, rtol=1e-3)


KERAS_CASES = {
    "sgd": ({}, lambda tf: tf.keras.optimizers.SGD(learning_rate=0.01)),
    "momentum": ({}, lambda tf: tf.keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)),
    "nesterov": (
        {"nesterov": True, "momentum": 0.8},
        lambda tf: tf.keras.optimizers.SGD(learning_rate=0.01, momentum=0.8, nesterov=True),
    ),
    "adam": ({}, lambda tf: tf.keras.optimizers.Adam(learning_rate=0.01)),
    "adagrad": ({}, lambda tf: tf.keras.optimizers.Adagrad(learning_rate=0.01)),
}


@pytest.mark.parametrize("case", sorted(KERAS_CASES))
def test_dense_updates_match_keras_optimizers_within_1e_5(case: str) -> None:
    """Issue 5: each server-side optimizer equals tf.keras' on the same dense gradients."""
    tf = pytest.importorskip("tensorflow")
    args, make_keras = KERAS_CASES[case]
    rng = np.random.default_rng(7)
    w0 = rng.normal(size=(5, 3)).astype(np.float32)
    grads = rng.normal(size=(20, 5, 3)).astype(np.float32)
    keras_opt = make_keras(tf)
    tf_var = tf.Variable(w0)
    for g in grads:
        keras_opt.apply_gradients([(tf.constant(g), tf_var)])
    kind = "momentum" if case == "nesterov" else case
    rule = make_rule(OptimizerConfig.parse(kind, 0.01, **args))
    w = w0.copy()
    slots = rule.init_slots(w)
    for t, g in enumerate(grads, start=1):
        w = rule.apply_dense(w, slots, g, t)
    assert not np.allclose(w, w0, rtol=1e-3)  # the sequence moved the weights
    np.testing.assert_allclose(w, tf_var.numpy(), rtol=1e-5, atol=1e-7)


def test_momentum_rows_are_lazy_and_match_dense_on_the_rows_touched() -> None:
    rule = make_rule(OptimizerConfig.parse("momentum", 0.1, momentum=0.5))
    table = np.ones((4, 2))
    dense = np.ones((4, 2))
    slots, dslots = rule.init_slots(table), rule.init_slots(dense)
    g = np.array([[1.0, 2.0]])
    for t in (1, 2):
        rule.apply_rows(table, slots, np.array([2]), g, t)
        full = np.zeros((4, 2))
        full[2] = g
        dense = rule.apply_dense(dense, dslots, full, t)
    np.testing.assert_allclose(table[2], dense[2])
    np.testing.assert_array_equal(table[[0, 1, 3]], 1.0)


@pytest.mark.parametrize(("kind", "dtype"), [("sgd", np.float32), ("adam", np.float32), ("adam", np.float16)])
def test_dense_updates_return_a_new_array_and_leave_the_old_value_untouched(kind: str, dtype: type) -> None:
    rule = make_rule(OptimizerConfig.parse(kind, 0.1))
    w = np.ones(4, dtype=dtype)
    w.flags.writeable = False  # what a reader holds (store.Variable.read): never written
    new = rule.apply_dense(w, rule.init_slots(w), np.full(4, 0.5, dtype=dtype), 1)
    assert new.dtype == dtype and new.shape == w.shape and new.flags.writeable
    np.testing.assert_array_equal(w, 1.0)
    assert np.all(new < 1.0)
