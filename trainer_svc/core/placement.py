"""Which shard holds which variable: the registration plan of a job, and its
layout as the shards report it.

Pure functions over NumPy arrays, using `mlmesh.keys` so the plan agrees by
construction with the routing of workers and the checks of the shards; plus
`read_layout`, which asks the shards (GetShardInfo) what they hold.

Source of truth: the coordinator decides once per job which dense variables
are partitioned (`keys.partitioned` with its `min_partition_bytes`) and which
shard holds each of the others (`keys.balance`), and registers them so. From
then on the shards' registration is the answer: workers and the
coordinator's evaluation read it back with `read_layout`, and a restarted
coordinator keeps what the shards already hold, whatever its setting now says.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from mlmesh import keys
from mlmesh.errors import FailedPrecondition, InvalidArgument

from trainer_svc.core.ports import ParamPort
from trainer_svc.core.types import ShardInfo, ShardVariable, VariableSpec


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
    registered: Mapping[str, Registered] | None = None,
) -> list[str]:
    """The dense variables to row-shard (in blocks) across all shards, in `variables` order.

    `registered` (what the shards already hold of the job) wins over the
    threshold for the variables it names, so re-registering a job keeps its layout.
    """
    registered = registered or {}
    out = []
    for name, value in variables.items():
        if name in sparse:
            continue
        if name in registered:
            if registered[name].row_sharded:
                out.append(name)
        elif keys.partitioned(value.shape, value.dtype.itemsize, num_shards, min_partition_bytes):
            out.append(name)
    return out


@dataclass(frozen=True)
class Registered:
    """How a shard already holds a variable of the job: row-sharded, or whole on `shard`."""

    row_sharded: bool
    shard: int = -1


def plan_registration(
    variables: Mapping[str, np.ndarray],
    sparse: Sequence[str],
    num_shards: int,
    partitioned: Collection[str] = (),
    registered: Mapping[str, Registered] | None = None,
) -> list[list[VariableSpec]]:
    """Per shard (in shard order), the variables it registers with their initial values.

    A sparse variable (embedding table) is row-sharded on every shard by a hash
    of the row id; a dense one named in `partitioned` in contiguous blocks; every
    other dense variable goes whole to one shard, balancing bytes over the shards
    (`keys.balance`, counting the row-sharded parts each already carries). A
    variable the shards already hold whole stays on its shard.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    check_sparse(variables, sparse)
    registered = registered or {}
    plan: list[list[VariableSpec]] = [[] for _ in range(num_shards)]
    preload = [0] * num_shards
    whole: dict[str, int] = {}
    for name, value in variables.items():
        shape = tuple(int(d) for d in value.shape)
        layout = keys.RowLayout.HASH if name in sparse else keys.RowLayout.BLOCKS
        if name in sparse or name in partitioned:
            rows = keys.row_placement(shape[0], num_shards, layout)
            for shard in range(num_shards):
                part = np.ascontiguousarray(rows.shard_slice(value, shard))
                plan[shard].append(VariableSpec(name, value.dtype.name, shape, True, part, layout.value))
                preload[shard] += part.nbytes
        elif name in registered and registered[name].shard >= 0:
            preload[registered[name].shard] += value.nbytes
        else:
            whole[name] = value.nbytes
    owners = keys.balance(whole, num_shards, preload)
    for name, value in variables.items():
        shard = owners.get(name, registered[name].shard if name in registered else -1)
        if shard >= 0 and name not in sparse and name not in partitioned:
            shape = tuple(int(d) for d in value.shape)
            plan[shard].append(VariableSpec(name, value.dtype.name, shape, False, value))
    return plan


@dataclass(frozen=True)
class Layout:
    """Where a job's variables live: dense ones whole on one shard or partitioned in blocks
    over all shards; sparse ones row-sharded by hash over all shards."""

    num_shards: int
    whole: list[list[str]]  # per shard, the dense variables it holds whole
    partitioned: dict[str, keys.RowPlacement]  # dense variables split in blocks of rows
    sparse: dict[str, keys.RowPlacement] = field(default_factory=dict)  # embedding tables

    def global_rows(self, name: str, shard: int) -> np.ndarray:
        """Global row ids of partitioned variable `name` that `shard` holds, in local order."""
        return self.partitioned[name].global_rows(shard)

    def assemble(self, name: str, slices: Sequence[np.ndarray]) -> np.ndarray:
        """The whole variable from each shard's part (in local order), shard by shard."""
        return self.partitioned[name].assemble(slices)

    def part(self, name: str, full: np.ndarray, shard: int) -> np.ndarray:
        """Shard `shard`'s rows of a whole partitioned array (a view)."""
        return self.partitioned[name].shard_slice(full, shard)


def layout_from_shards(
    job_id: str,
    dense: Sequence[str],
    sparse: Sequence[str],
    infos: Sequence[ShardInfo],
) -> Layout:
    """The layout of the job's variables as the shards (`infos`, in shard order) hold job `job_id`.

    FailedPrecondition when a shard reports another index or shard count than
    its position, or a variable is missing or inconsistently registered.
    """
    n = len(infos)
    held: list[dict[str, ShardVariable]] = []
    for shard, info in enumerate(infos):
        if (info.shard_index, info.num_shards) != (shard, n):
            raise FailedPrecondition(
                f"the shard at position {shard} of {n} says it is shard {info.shard_index} of "
                f"{info.num_shards}; the shard addresses must be in shard-index order"
            )
        held.append({v.name: v for v in info.variables if v.job_id == job_id})

    def row_sharded_everywhere(name: str, layout: keys.RowLayout) -> keys.RowPlacement:
        dense_on = [s for s in range(n) if name in held[s] and not held[s][name].row_sharded]
        if dense_on:
            raise FailedPrecondition(
                f"variable {name!r} of job {job_id!r} is dense on shard {dense_on[0]}; expected it "
                f"row-sharded ({layout.value}) on every shard"
            )
        for shard in range(n):
            v = held[shard].get(name)
            if v is None:
                raise FailedPrecondition(
                    f"variable {name!r} of job {job_id!r} is not registered on shard {shard}"
                )
            if not v.row_sharded or v.layout != layout.value:
                how = f"row-sharded ({v.layout})" if v.row_sharded else "dense"
                raise FailedPrecondition(
                    f"variable {name!r} of job {job_id!r} is {how} on shard {shard}; expected it "
                    f"row-sharded ({layout.value}) on every shard"
                )
        return keys.row_placement(held[0][name].shape[0], n, layout)

    sparse_rows = {name: row_sharded_everywhere(name, keys.RowLayout.HASH) for name in sparse}
    whole: list[list[str]] = [[] for _ in range(n)]
    parts: dict[str, keys.RowPlacement] = {}
    for name in dense:
        owners = [s for s in range(n) if name in held[s] and not held[s][name].row_sharded]
        if len(owners) > 1:
            raise FailedPrecondition(f"dense variable {name!r} of job {job_id!r} is on shards {owners}")
        if owners:
            whole[owners[0]].append(name)
        else:
            parts[name] = row_sharded_everywhere(name, keys.RowLayout.BLOCKS)
    return Layout(n, whole, parts, sparse_rows)


async def read_layout(params: ParamPort, job_id: str, dense: Sequence[str], sparse: Sequence[str]) -> Layout:
    """Ask every shard what it holds of `job_id` (GetShardInfo) and build the layout."""
    infos = await asyncio.gather(*(params.shard_info(s) for s in range(params.num_shards)))
    return layout_from_shards(job_id, dense, sparse, infos)


def chunk_specs(specs: Sequence[VariableSpec], max_bytes: int) -> list[list[VariableSpec]]:
    """Split one shard's registration into requests of at most ~max_bytes of values.

    A single variable larger than max_bytes goes alone in its chunk (the caller streams it:
    RegisterVariablesStream).
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
