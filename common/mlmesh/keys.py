"""Placement of variables and rows on parameter-server shards.

Pure functions shared by the workers (who route pulls and pushes), the
coordinator (who registers variables) and the shards (who check that what
they receive is theirs), so all agree by construction.

Two kinds of variables:

- A **dense** variable lives whole on one shard. The coordinator chooses it
  with `balance`: largest first, each to the shard holding the fewest bytes
  so far (longest-processing-time scheduling), so shards carry even loads
  whatever the names. The shards' registration is then the source of truth
  (workers read it back with GetShardInfo); nothing recomputes it.
- A **row-sharded** variable of shape [rows, ...] spreads its rows over all n
  shards with one of two layouts (`RowPlacement`):
  - `HASH` (embedding tables): row r lives on shard `splitmix64(r) % n`, at a
    local index that is its rank among that shard's rows. Ids are often
    assigned by popularity (id 0 the most frequent), so a modulo layout puts
    the head of a Zipf distribution on a few shards; a mixing hash spreads
    it evenly.
  - `BLOCKS` (large dense variables, see `partitioned`): shard i holds the
    contiguous rows [bounds[i], bounds[i+1]) (sizes differ by at most one),
    so splitting a gradient and reassembling a value are slices, not
    gathers - TensorFlow's `MinSizePartitioner` layout.

`partitioned(shape, itemsize, n, min_partition_bytes)` says whether a dense
variable is row-sharded in blocks: at least `min_partition_bytes` bytes
(default `MIN_PARTITION_BYTES`, 256 KiB - `MinSizePartitioner`'s default
`min_shard_bytes`), at least one row per shard, ndim >= 1, n >= 2. Below it
a variable is cheap for one shard to hold and update, while partitioning it
would add a part to every shard's pull and push.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np

MIN_PARTITION_BYTES = 256 * 1024


class RowLayout(enum.Enum):
    HASH = "hash"
    BLOCKS = "blocks"


def _check_shards(num_shards: int) -> None:
    if num_shards <= 0:
        raise ValueError(f"num_shards must be positive, got {num_shards}")


def partitioned(
    shape: Sequence[int], itemsize: int, num_shards: int, min_partition_bytes: int = MIN_PARTITION_BYTES
) -> bool:
    """Whether a dense variable of `shape` is row-sharded (in blocks) across all shards."""
    _check_shards(num_shards)
    if min_partition_bytes < 0:
        raise ValueError(f"min_partition_bytes must be >= 0, got {min_partition_bytes}")
    if num_shards == 1 or len(shape) == 0 or shape[0] < num_shards:
        return False
    return math.prod(int(d) for d in shape) * itemsize >= min_partition_bytes


def balance(
    sizes: Mapping[str, int], num_shards: int, preload: Sequence[int] | None = None
) -> dict[str, int]:
    """Shard of each dense variable, balancing bytes (largest first onto the lightest shard).

    `preload` is what each shard already carries (its parts of row-sharded
    variables). Deterministic: ties go by name, then by the lower shard index.
    """
    _check_shards(num_shards)
    load = list(preload) if preload is not None else [0] * num_shards
    if len(load) != num_shards:
        raise ValueError(f"preload has {len(load)} entries for {num_shards} shards")
    out: dict[str, int] = {}
    for name in sorted(sizes, key=lambda k: (-sizes[k], k)):
        shard = min(range(num_shards), key=lambda s: (load[s], s))
        out[name] = shard
        load[shard] += sizes[name]
    return out


def mix64(ids: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijective, well-mixing hash of int64 ids (as uint64)."""
    z = np.asarray(ids, dtype=np.int64).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class RowPlacement:
    """Where each of `total` rows lives among `num_shards` shards, and at which local index.

    Immutable once built; get instances from `row_placement` (cached: the
    HASH tables cost 8 bytes a row).
    """

    def __init__(self, total: int, num_shards: int, layout: RowLayout) -> None:
        _check_shards(num_shards)
        if total < 0:
            raise ValueError(f"total rows must be >= 0, got {total}")
        self.total = total
        self.num_shards = num_shards
        self.layout = layout
        if layout is RowLayout.BLOCKS:
            self.bounds = np.array([s * total // num_shards for s in range(num_shards + 1)], dtype=np.int64)
            self._owner_table = None
            self._local_table = None
            self._counts = np.diff(self.bounds)
        else:
            owner = (mix64(np.arange(total, dtype=np.int64)) % np.uint64(num_shards)).astype(np.int32)
            order = np.argsort(owner, kind="stable")  # by shard, ascending global id within each
            self._counts = np.bincount(owner, minlength=num_shards).astype(np.int64)
            starts = np.concatenate([[0], np.cumsum(self._counts)[:-1]])
            local = np.empty(total, dtype=np.int64)
            local[order] = np.arange(total, dtype=np.int64) - np.repeat(starts, self._counts)
            self._owner_table = owner
            self._local_table = local
            self._order = order
            self._starts = starts

    def count(self, shard: int) -> int:
        """How many rows `shard` holds."""
        self._check_shard(shard)
        return int(self._counts[shard])

    def owner(self, ids: np.ndarray) -> np.ndarray:
        """Owning shard of each global row id (ids must be within [0, total))."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._owner_table is not None:
            return self._owner_table[ids].astype(np.int64)
        return np.searchsorted(self.bounds, ids, side="right") - 1

    def local(self, ids: np.ndarray) -> np.ndarray:
        """Local index of each global row id on its owning shard."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._local_table is not None:
            return self._local_table[ids]
        return ids - self.bounds[self.owner(ids)]

    def global_rows(self, shard: int) -> np.ndarray:
        """The global ids `shard` holds, in local order (ascending)."""
        self._check_shard(shard)
        if self._owner_table is None:
            return np.arange(self.bounds[shard], self.bounds[shard + 1], dtype=np.int64)
        start = self._starts[shard]
        return self._order[start : start + self._counts[shard]].astype(np.int64)

    def split(self, ids: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Group global row ids by shard: for each shard, (positions into `ids`, the ids there),
        so a caller can scatter each shard's answer back into request order."""
        ids = np.asarray(ids, dtype=np.int64)
        owners = self.owner(ids)
        out = []
        for shard in range(self.num_shards):
            pos = np.nonzero(owners == shard)[0]
            out.append((pos, ids[pos]))
        return out

    def shard_slice(self, full: np.ndarray, shard: int) -> np.ndarray:
        """The rows of a full array that `shard` holds, in local order (a view for BLOCKS)."""
        if self.layout is RowLayout.BLOCKS:
            return full[self.bounds[shard] : self.bounds[shard + 1]]
        return full[self.global_rows(shard)]

    def assemble(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """The full array from every shard's part (in shard order, each in local order)."""
        if len(parts) != self.num_shards:
            raise ValueError(f"{len(parts)} parts for {self.num_shards} shards")
        if self.layout is RowLayout.BLOCKS:
            return np.concatenate(parts)
        full = np.empty((self.total, *parts[0].shape[1:]), dtype=parts[0].dtype)
        for shard, part in enumerate(parts):
            full[self.global_rows(shard)] = part
        return full

    def _check_shard(self, shard: int) -> None:
        if not 0 <= shard < self.num_shards:
            raise ValueError(f"shard {shard} is outside 0..{self.num_shards - 1}")


@functools.lru_cache(maxsize=32)
def row_placement(total: int, num_shards: int, layout: RowLayout = RowLayout.HASH) -> RowPlacement:
    return RowPlacement(total, num_shards, layout)


def local_rows(total: int, shard: int, num_shards: int, layout: RowLayout = RowLayout.HASH) -> int:
    """How many of `total` rows shard `shard` holds."""
    return row_placement(total, num_shards, layout).count(shard)
