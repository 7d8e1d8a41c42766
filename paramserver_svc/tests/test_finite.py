"""The NaN/Inf check of pushed gradients: its fast path and its exact fallback agree with np.isfinite."""

from __future__ import annotations

import numpy as np
import pytest

from paramserver_svc.core.finite import all_finite

pytestmark = pytest.mark.unit

DTYPES = [np.float32, np.float64, np.float16]


@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_arrays_pass(dtype: type) -> None:
    rng = np.random.default_rng(0)
    assert all_finite(rng.normal(size=(64, 33)).astype(dtype))
    assert all_finite(np.zeros(0, dtype=dtype))
    assert all_finite(np.array(3.5, dtype=dtype))  # 0-d
    assert all_finite(rng.normal(size=(40, 40)).astype(dtype)[:, ::3])  # not contiguous


@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_values_whose_sum_overflows_pass(dtype: type) -> None:
    """The fast path's sum of squares overflows to Inf; the exact check then accepts."""
    big = np.finfo(dtype).max
    grad = np.full(1000, big, dtype=dtype)
    grad[::2] = -big  # a plain sum would cancel; the squares cannot
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.dot(grad, grad))
    assert all_finite(grad)
    assert all_finite(np.full((10, 10), np.sqrt(big) * 2, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 12_345, -1])
def test_one_nan_or_inf_anywhere_fails(dtype: type, bad: float, where: int) -> None:
    grad = np.full(100_000, 1e-3, dtype=dtype)
    grad[where] = bad
    assert not all_finite(grad)
    assert not all_finite(grad.reshape(400, 250))
