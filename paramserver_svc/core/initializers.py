"""First values of variables, deterministic from the seed.

A dense variable's random values depend only on its seed; a row-sharded
variable's also on the shard index, so shards do not hold copies of the same
rows. Pure functions: thread-safe.
"""

from __future__ import annotations

import math

import numpy as np
from mlmesh.errors import InvalidArgument

from paramserver_svc.core.specs import InitSpec, VarSpec, describe_shape


def glorot_limit(shape: tuple[int, ...]) -> float:
    """sqrt(6 / (fan_in + fan_out)), with fans computed as Keras does (from the global shape)."""
    if len(shape) == 0:
        fan_in = fan_out = 1
    elif len(shape) == 1:
        fan_in = fan_out = shape[0]
    elif len(shape) == 2:
        fan_in, fan_out = shape
    else:
        receptive = math.prod(shape[:-2])
        fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    return math.sqrt(6.0 / max(1, fan_in + fan_out))


def _rng(init: InitSpec, var: VarSpec, shard_index: int) -> np.random.Generator:
    seed = init.seed & 0xFFFF_FFFF_FFFF_FFFF  # SeedSequence wants non-negative entropy
    entropy = [seed, shard_index] if var.row_sharded else [seed]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def initial_value(var: VarSpec, init: InitSpec, local_shape: tuple[int, ...], shard_index: int) -> np.ndarray:
    """A new writable C-contiguous array of `var.dtype` and `local_shape`.

    Raises InvalidArgument when a "value" tensor does not match the slice.
    """
    init.validate(var)
    dtype = var.dtype
    if init.kind == "value":
        value = init.value
        assert value is not None  # checked by validate
        if value.dtype != dtype or tuple(value.shape) != local_shape:
            raise InvalidArgument(
                f"initial value of variable {var.name!r} is "
                f"{describe_shape(value.dtype, tuple(value.shape))} "
                f"but this shard's slice is {describe_shape(dtype, local_shape)}"
            )
        if var.is_floating and not np.isfinite(value).all():
            raise InvalidArgument(f"initial value of variable {var.name!r} contains NaN or Inf")
        return np.array(value, dtype=dtype, order="C", copy=True)
    if init.kind == "zeros":
        return np.zeros(local_shape, dtype=dtype)
    if init.kind == "ones":
        return np.ones(local_shape, dtype=dtype)
    if init.kind == "constant":
        return np.full(local_shape, init.scale, dtype=dtype)
    rng = _rng(init, var, shard_index)
    if init.kind == "random_normal":
        out = rng.normal(0.0, init.scale, size=local_shape)
    elif init.kind == "random_uniform":
        out = rng.uniform(-init.scale, init.scale, size=local_shape)
    else:  # glorot_uniform
        limit = glorot_limit(var.shape)
        out = rng.uniform(-limit, limit, size=local_shape)
    return np.ascontiguousarray(out, dtype=dtype)
