"""Which shard holds which variable: the registration plan of a job, and its
layout as the shards report it.

Pure functions over NumPy arrays, using `mlmesh.keys` so the plan agrees by
construction with the routing of workers and the checks of the shards; plus
`read_layout`, which asks the shards (GetShardInfo) what they hold.

Source of truth: the coordinator decides once per job which dense variables
are partitioned (`keys.partitioned` with its `min_partition_bytes`) and
registers them row-sharded on every shard. From then on the shards'
registration is the answer: workers and the coordinator's evaluation read it
back with `read_layout`, and a restarted coordinator keeps what the shards
already hold, whatever its setting now says.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from mlmesh import keys
from mlmesh.errors import FailedPrecondition, InvalidArgument

from trainer_svc.core.ports import ParamPort
from trainer_svc.core.types import ShardInfo, VariableSpec


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


def partitioned_names(
    variables: Mapping[str, np.ndarray],
    sparse: Collection[str],
    num_shards: int,
    min_partition_bytes: int = keys.MIN_PARTITION_BYTES,
    registered: Mapping[str, bool] | None = None,
) -> list[str]:
    """The dense variables to row-shard across all shards, in `variables` order.

    `registered` (name -> row_sharded, as the shards already hold the job)
    wins over the threshold for the variables it names, so re-registering a
    job keeps its layout.
    """
    registered = registered or {}
    out = []
    for name, value in variables.items():
        if name in sparse:
            continue
        if name in registered:
            if registered[name]:
                out.append(name)
        elif keys.partitioned(value.shape, value.dtype.itemsize, num_shards, min_partition_bytes):
            out.append(name)
    return out


def plan_registration(
    variables: Mapping[str, np.ndarray],
    sparse: Sequence[str],
    num_shards: int,
    partitioned: Collection[str] = (),
) -> list[list[VariableSpec]]:
    """Per shard (in shard order), the variables it registers with their initial values.

    A dense variable goes whole to `keys.dense_shard(name, n)`; a sparse one,
    or a dense one named in `partitioned`, is registered row-sharded on every
    shard with that shard's rows (`keys.shard_slice`).
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    check_sparse(variables, sparse)
    plan: list[list[VariableSpec]] = [[] for _ in range(num_shards)]
    row_sharded = set(sparse) | set(partitioned)
    for name, value in variables.items():
        shape = tuple(int(d) for d in value.shape)
        if name in row_sharded:
            for shard in range(num_shards):
                part = np.ascontiguousarray(keys.shard_slice(value, shard, num_shards))
                plan[shard].append(VariableSpec(name, value.dtype.name, shape, True, part))
        else:
            shard = keys.dense_shard(name, num_shards)
            plan[shard].append(VariableSpec(name, value.dtype.name, shape, False, value))
    return plan


@dataclass(frozen=True)
class Layout:
    """Where a job's dense variables live: whole on one shard, or partitioned by rows
    over all shards (row r on shard r % n at local index r // n)."""

    num_shards: int
    whole: list[list[str]]  # per shard, the dense variables it holds whole
    partitioned: dict[str, tuple[int, ...]]  # name -> global shape
    _rows: dict[tuple[str, int], np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def global_rows(self, name: str, shard: int) -> np.ndarray:
        """Global row ids of partitioned variable `name` that `shard` holds, in local order."""
        key = (name, shard)
        if key not in self._rows:
            n = self.num_shards
            local = np.arange(keys.local_rows(self.partitioned[name][0], shard, n), dtype=np.int64)
            self._rows[key] = keys.to_global(local, shard, n)
        return self._rows[key]

    def assemble(self, name: str, slices: Sequence[np.ndarray]) -> np.ndarray:
        """The whole variable from each shard's slice (in local order), shard by shard."""
        first = slices[0]
        full = np.empty(self.partitioned[name], dtype=first.dtype)
        for shard, part in enumerate(slices):
            full[shard :: self.num_shards] = part
        return full


def layout_from_shards(
    job_id: str,
    dense: Sequence[str],
    sparse: Sequence[str],
    infos: Sequence[ShardInfo],
) -> Layout:
    """The layout of `dense` variables as the shards (`infos`, in shard order) hold job `job_id`.

    FailedPrecondition when a shard reports another index or shard count than
    its position, or a variable is missing or inconsistently registered.
    """
    n = len(infos)
    held: list[dict[str, tuple[tuple[int, ...], bool]]] = []
    for shard, info in enumerate(infos):
        if (info.shard_index, info.num_shards) != (shard, n):
            raise FailedPrecondition(
                f"the shard at position {shard} of {n} says it is shard {info.shard_index} of "
                f"{info.num_shards}; the shard addresses must be in shard-index order"
            )
        held.append({v.name: (v.shape, v.row_sharded) for v in info.variables if v.job_id == job_id})

    def where(name: str, shard: int) -> tuple[tuple[int, ...], bool]:
        if name not in held[shard]:
            raise FailedPrecondition(
                f"variable {name!r} of job {job_id!r} is not registered on shard {shard}"
            )
        return held[shard][name]

    for name in sparse:
        for shard in range(n):
            if not where(name, shard)[1]:
                raise FailedPrecondition(
                    f"sparse variable {name!r} of job {job_id!r} is dense on shard {shard}"
                )
    whole: list[list[str]] = [[] for _ in range(n)]
    parts: dict[str, tuple[int, ...]] = {}
    for name in dense:
        owner = keys.dense_shard(name, n)
        if name in held[owner] and not held[owner][name][1]:
            whole[owner].append(name)
            continue
        for shard in range(n):
            shape, row_sharded = where(name, shard)
            if not row_sharded:
                raise FailedPrecondition(
                    f"variable {name!r} of job {job_id!r} is dense on shard {shard} but belongs on "
                    f"shard {owner} (mlmesh.keys.dense_shard)"
                )
        parts[name] = shape
    return Layout(n, whole, parts)


async def read_layout(params: ParamPort, job_id: str, dense: Sequence[str], sparse: Sequence[str]) -> Layout:
    """Ask every shard what it holds of `job_id` (GetShardInfo) and build the layout."""
    infos = await asyncio.gather(*(params.shard_info(s) for s in range(params.num_shards)))
    return layout_from_shards(job_id, dense, sparse, infos)


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
