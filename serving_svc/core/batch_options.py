"""Batching options: TensorFlow Serving's knobs, validated (InvalidArgument names the field).

Pure values shared by the batcher, the settings and the admin RPC.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from mlmesh.errors import InvalidArgument

MAX_BATCH_SIZE = 65_536


def parse_sizes(text: str) -> list[int]:
    """'8,16,32' → [8, 16, 32]; InvalidArgument names an entry that is not an integer."""
    sizes = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if not part.isdigit():
            raise InvalidArgument(f"allowed_batch_sizes entry {part!r} is not a positive integer")
        sizes.append(int(part))
    return sizes


def check_allowed_batch_sizes(sizes: Sequence[int], max_batch_size: int) -> None:
    """TF Serving's rule: strictly increasing positive sizes, the last equal to max_batch_size."""
    if not sizes:
        return
    if any(s < 1 for s in sizes) or any(b <= a for a, b in itertools.pairwise(sizes)):
        raise InvalidArgument(f"allowed_batch_sizes {list(sizes)} must be positive and strictly increasing")
    if sizes[-1] != max_batch_size:
        raise InvalidArgument(
            f"allowed_batch_sizes {list(sizes)} must end with max_batch_size ({max_batch_size}), "
            f"not {sizes[-1]}"
        )


@dataclass(frozen=True)
class BatchingOptions:
    """One model's batching knobs (TF Serving's names). Immutable: change with `replace`."""

    max_batch_size: int = 32
    batch_timeout_micros: int = 2000
    max_enqueued_batches: int = 64
    num_batch_threads: int = 2
    allowed_batch_sizes: tuple[int, ...] = ()
    max_queue: int = 1024

    _BOUNDS: ClassVar[dict[str, tuple[int, int]]] = {
        "max_batch_size": (1, MAX_BATCH_SIZE),
        "batch_timeout_micros": (0, 10_000_000),
        "max_enqueued_batches": (1, 1_000_000),
        "num_batch_threads": (1, 64),
        "max_queue": (1, 1_000_000),
    }

    def __post_init__(self) -> None:
        for name, (low, high) in self._BOUNDS.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise InvalidArgument(f"{name} is {value}; expected {low}..{high}")
        check_allowed_batch_sizes(self.allowed_batch_sizes, self.max_batch_size)

    @property
    def timeout_s(self) -> float:
        return self.batch_timeout_micros / 1e6

    def replace(self, **changes: Any) -> BatchingOptions:
        """A validated copy; InvalidArgument names the unknown or out-of-range field."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise InvalidArgument(f"unknown batching field {unknown[0]!r}; expected one of {sorted(known)}")
        if "allowed_batch_sizes" in changes:
            changes["allowed_batch_sizes"] = tuple(changes["allowed_batch_sizes"])
        elif "max_batch_size" in changes and self.allowed_batch_sizes:
            # Sizes that would no longer end at the maximum are cut at it.
            cap = changes["max_batch_size"]
            kept = tuple(s for s in self.allowed_batch_sizes if s < cap)
            changes["allowed_batch_sizes"] = (*kept, cap)
        return dataclasses.replace(self, **changes)

    def capped(self, cap: int | None) -> BatchingOptions:
        """For a signature with a fixed batch dimension `cap`: batches of at most `cap`,
        padded to exactly `cap` (the only size the signature accepts)."""
        if cap is None or cap >= self.max_batch_size:
            return self
        return dataclasses.replace(self, max_batch_size=cap, allowed_batch_sizes=(cap,))

    def padded_size(self, n: int) -> int:
        """The allowed size a batch of n is padded to (n itself without sizes, or above the maximum)."""
        for size in self.allowed_batch_sizes:
            if size >= n:
                return size
        return n
