"""Update rules (ps-lite's pluggable handler): how a gradient changes a variable.

Each rule is a strategy object with one formula, `_delta`, written once and
used two ways: on the whole array (dense variables) and on gathered rows
(row-sharded variables). On rows, only the rows a push touches change, slots
included: that is "lazy" Adam/Adagrad, the usual choice for embeddings.

Formulas match Keras 3 (`keras.optimizers.SGD` with and without momentum,
`Adam`, `Adagrad`), with `t` the number of updates this variable has
received, this one included; `test_update_rules` checks each against Keras
on the same gradients.

Not thread-safe: the caller holds the job's lock while applying.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np

from paramserver_svc.core.specs import OptimizerConfig

# Keras' Adagrad starts its accumulators at 0.1, which bounds the first steps.
ADAGRAD_INITIAL_ACCUMULATOR = 0.1

Slots = dict[str, np.ndarray]


def work_dtype(dtype: np.dtype) -> np.dtype:
    """Precision of slots and arithmetic: float64 stays, everything else computes in float32."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


class UpdateRule(ABC):
    """One optimizer. Subclasses define slot names, their start value and `_delta`."""

    slot_names: tuple[str, ...] = ()
    # Whether each element's new value and slots depend on that element alone: then a dense
    # update may be computed piece by piece (`apply_dense_to`) as a streamed push arrives.
    elementwise: bool = True

    def __init__(self, config: OptimizerConfig) -> None:
        self.config = config

    def init_slots(self, value: np.ndarray) -> Slots:
        wd = work_dtype(value.dtype)
        return {name: np.full(value.shape, self._slot_start(name), dtype=wd) for name in self.slot_names}

    def _slot_start(self, name: str) -> float:
        return 0.0

    @abstractmethod
    def _delta(self, slots: Slots, grad: np.ndarray, t: int) -> np.ndarray:
        """Update `slots` in place and return what to subtract from the variable, in a new
        array of the caller's to overwrite."""

    def apply_dense(self, value: np.ndarray, slots: Slots, grad: np.ndarray, t: int) -> np.ndarray:
        """value - delta as a new array; `value` itself is not written (readers may hold it,
        see `store.Variable`). grad has value's shape."""
        delta = self._delta(slots, grad.astype(work_dtype(value.dtype), copy=False), t)
        # The new value goes into delta's own array when the dtypes allow: no temporary.
        out = delta if delta.dtype == value.dtype else np.empty_like(value)
        return np.subtract(value, delta, out=out, casting="unsafe")

    def apply_dense_to(
        self, value: np.ndarray, slots: Slots, grad: np.ndarray, t: int, out: np.ndarray, out_slots: Slots
    ) -> None:
        """`apply_dense` into the caller's arrays: the new value into `out`, the new slots into
        `out_slots`; neither `value` nor `slots` is written. The same arithmetic, so the same
        bits; on a piece of an array when the rule is `elementwise`."""
        for name, s in slots.items():
            np.copyto(out_slots[name], s)
        delta = self._delta(out_slots, grad.astype(work_dtype(value.dtype), copy=False), t)
        np.subtract(value, delta, out=out, casting="unsafe")

    def apply_rows(self, value: np.ndarray, slots: Slots, idx: np.ndarray, grad: np.ndarray, t: int) -> None:
        """Update rows `idx` (unique local indices) of value and slots; grad is [len(idx), ...]."""
        if len(idx) == 0:
            return
        gathered = {name: s[idx] for name, s in slots.items()}
        delta = self._delta(gathered, grad.astype(work_dtype(value.dtype), copy=False), t)
        for name, s in gathered.items():
            slots[name][idx] = s
        value[idx] = value[idx] - delta


class SGD(UpdateRule):
    def _delta(self, slots: Slots, grad: np.ndarray, t: int) -> np.ndarray:
        return grad * self.config.learning_rate


class Momentum(UpdateRule):
    """Keras' SGD(momentum=mu[, nesterov]): m = mu*m - lr*g; w += m (Nesterov: w += mu*m - lr*g)."""

    slot_names = ("momentum",)

    def _delta(self, slots: Slots, grad: np.ndarray, t: int) -> np.ndarray:
        c = self.config
        m = slots["momentum"]
        step = grad * c.learning_rate
        m *= c.momentum
        m -= step
        if c.nesterov:
            return step - m * c.momentum
        return -m


class Adam(UpdateRule):
    slot_names = ("m", "v")

    def _delta(self, slots: Slots, grad: np.ndarray, t: int) -> np.ndarray:
        c = self.config
        m, v = slots["m"], slots["v"]
        m += (grad - m) * (1.0 - c.beta_1)
        v += (np.square(grad) - v) * (1.0 - c.beta_2)
        alpha = c.learning_rate * math.sqrt(1.0 - c.beta_2**t) / (1.0 - c.beta_1**t)
        denom = np.sqrt(v)
        denom += c.epsilon
        out = m * alpha
        out /= denom
        return out


class Adagrad(UpdateRule):
    slot_names = ("accumulator",)

    def _slot_start(self, name: str) -> float:
        return ADAGRAD_INITIAL_ACCUMULATOR

    def _delta(self, slots: Slots, grad: np.ndarray, t: int) -> np.ndarray:
        acc = slots["accumulator"]
        acc += np.square(grad)
        out = grad * self.config.learning_rate
        out /= np.sqrt(acc + self.config.epsilon)
        return out


_RULES: dict[str, type[UpdateRule]] = {"sgd": SGD, "momentum": Momentum, "adam": Adam, "adagrad": Adagrad}


def make_rule(config: OptimizerConfig) -> UpdateRule:
    return _RULES[config.kind](config)
