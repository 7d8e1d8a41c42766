"""Which shard holds which variable: the registration plan of a job.

Pure functions over NumPy arrays, using `mlmesh.keys` so the plan agrees by
construction with the routing of workers and the checks of the shards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from mlmesh import keys
from mlmesh.errors import InvalidArgument

from trainer_svc.core.types import VariableSpec


def check_sparse(variables: Mapping[str, np.ndarray], sparse: Sequence[str]) -> None:
    """Every sparse variable must exist and be 2-D (an embedding table)."""
    for name in sparse:
        if name not in variables:
            raise InvalidArgument(
                f"sparse variable {name!r} is not a trainable variable of the model; "
                f"variables are {sorted(variables)}"
            )
        if variables[name].ndim != 2:
            raise InvalidArgument(
                f"sparse variable {name!r} has shape {list(variables[name].shape)}; row sharding needs 2-D"
            )


def plan_registration(
    variables: Mapping[str, np.ndarray], sparse: Sequence[str], num_shards: int
) -> list[list[VariableSpec]]:
    """Per shard (in shard order), the variables it registers with their initial values.

    A dense variable goes whole to `keys.dense_shard(name, n)`; a sparse one is
    registered on every shard with that shard's rows (`keys.shard_slice`).
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    check_sparse(variables, sparse)
    plan: list[list[VariableSpec]] = [[] for _ in range(num_shards)]
    sparse_set = set(sparse)
    for name, value in variables.items():
        shape = tuple(int(d) for d in value.shape)
        if name in sparse_set:
            for shard in range(num_shards):
                part = np.ascontiguousarray(keys.shard_slice(value, shard, num_shards))
                plan[shard].append(VariableSpec(name, value.dtype.name, shape, True, part))
        else:
            shard = keys.dense_shard(name, num_shards)
            plan[shard].append(VariableSpec(name, value.dtype.name, shape, False, value))
    return plan


def dense_by_shard(names: Sequence[str], num_shards: int) -> list[list[str]]:
    """Dense variable names grouped by owning shard (in the given order)."""
    out: list[list[str]] = [[] for _ in range(num_shards)]
    for name in names:
        out[keys.dense_shard(name, num_shards)].append(name)
    return out


def chunk_specs(specs: Sequence[VariableSpec], max_bytes: int) -> list[list[VariableSpec]]:
    """Split one shard's registration into requests of at most ~max_bytes of values.

    A single variable larger than max_bytes goes alone in its chunk.
    """
    chunks: list[list[VariableSpec]] = []
    current: list[VariableSpec] = []
    size = 0
    for spec in specs:
        n = spec.value.nbytes
        if current and size + n > max_bytes:
            chunks.append(current)
            current, size = [], 0
        current.append(spec)
        size += n
    if current:
        chunks.append(current)
    return chunks
