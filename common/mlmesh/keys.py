"""Placement of variables and rows on parameter-server shards.

Pure functions shared by the workers (who route pulls and pushes) and the
shards (who check that what they receive is theirs), so both agree by
construction.

- A dense variable lives whole on `dense_shard(name, n)`: a stable hash of its
  name (crc32), independent of registration order and of other variables.
- A row-sharded variable of shape [rows, ...] keeps global row r on shard
  r % n, at local index r // n.
- A large dense variable is *partitioned*: `partitioned(shape, itemsize, n,
  min_partition_bytes)` says it is row-sharded across all n shards with the
  layout above (like TensorFlow's `MinSizePartitioner` for ParameterServer-
  Strategy), so no single shard holds, serves and updates it alone. It is
  partitioned when it has at least `min_partition_bytes` bytes (default
  `MIN_PARTITION_BYTES`, 256 KiB), at least one row per shard, ndim >= 1,
  and there are at least 2 shards. Everything else stays whole on
  `dense_shard`.

  Why 256 KiB: it is `MinSizePartitioner`'s default `min_shard_bytes`.
  Below it a variable is cheap for one shard to hold and update, while
  partitioning it would add a part (and its row ids) to every shard's pull
  and push; above it sit the variables that unbalance shards - typically
  the dense layer after a flatten, 91% of the shipped Fashion-MNIST CNN's
  parameters (800 KiB; its next largest variable is 72 KiB).

  The decision is made once per job, by the coordinator, which registers
  the variable as row-sharded on every shard; workers read it back from the
  shards (`GetShardInfo`), so a setting that differs between processes
  cannot split a job's view of where its rows live.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np

MIN_PARTITION_BYTES = 256 * 1024


def dense_shard(name: str, num_shards: int) -> int:
    if num_shards <= 0:
        raise ValueError(f"num_shards must be positive, got {num_shards}")
    return zlib.crc32(name.encode()) % num_shards


def partitioned(
    shape: Sequence[int], itemsize: int, num_shards: int, min_partition_bytes: int = MIN_PARTITION_BYTES
) -> bool:
    """Whether a dense variable of `shape` is row-sharded across all shards (see the module doc)."""
    if num_shards <= 0:
        raise ValueError(f"num_shards must be positive, got {num_shards}")
    if min_partition_bytes < 0:
        raise ValueError(f"min_partition_bytes must be >= 0, got {min_partition_bytes}")
    if num_shards == 1 or len(shape) == 0 or shape[0] < num_shards:
        return False
    return math.prod(int(d) for d in shape) * itemsize >= min_partition_bytes


def row_shard(rows: np.ndarray, num_shards: int) -> np.ndarray:
    """Owning shard of each global row id."""
    return np.asarray(rows, dtype=np.int64) % num_shards


def local_rows(global_rows: int, shard: int, num_shards: int) -> int:
    """How many of `global_rows` rows shard `shard` holds."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is outside 0..{num_shards - 1}")
    return max(0, (global_rows - shard + num_shards - 1) // num_shards)


def to_local(rows: np.ndarray, num_shards: int) -> np.ndarray:
    """Local index of global rows on their owning shard."""
    return np.asarray(rows, dtype=np.int64) // num_shards


def to_global(local: np.ndarray, shard: int, num_shards: int) -> np.ndarray:
    return np.asarray(local, dtype=np.int64) * num_shards + shard


def split_rows(rows: np.ndarray, num_shards: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Group global row ids by shard.

    Returns, for each shard, (positions into `rows`, the global ids there), so a
    caller can scatter each shard's answer back into request order.
    """
    rows = np.asarray(rows, dtype=np.int64)
    owners = row_shard(rows, num_shards)
    out = []
    for shard in range(num_shards):
        pos = np.nonzero(owners == shard)[0]
        out.append((pos, rows[pos]))
    return out


def shard_slice(full: np.ndarray, shard: int, num_shards: int) -> np.ndarray:
    """The rows of a full row-sharded array that `shard` holds, in local order."""
    return full[shard::num_shards]
