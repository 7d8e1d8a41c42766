"""Placement of variables and rows on parameter-server shards.

Pure functions shared by the workers (who route pulls and pushes) and the
shards (who check that what they receive is theirs), so both agree by
construction.

- A dense variable lives whole on `dense_shard(name, n)`: a stable hash of its
  name (crc32), independent of registration order and of other variables.
- A row-sharded variable of shape [rows, ...] keeps global row r on shard
  r % n, at local index r // n.
"""

from __future__ import annotations

import zlib

import numpy as np


def dense_shard(name: str, num_shards: int) -> int:
    if num_shards <= 0:
        raise ValueError(f"num_shards must be positive, got {num_shards}")
    return zlib.crc32(name.encode()) % num_shards


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
