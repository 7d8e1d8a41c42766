"""The memory budget: estimate a version before loading it, reserve while it lives.

The estimate follows TF Serving (`bundle_factory_util.cc`,
EstimateResourceFromPath): the total size of the files of the version
directory times a factor (TF Serving: kResourceEstimateRAMMultiplier = 1.2,
no padding). It is read from disk before the load, so a version that can never
fit is refused without touching TensorFlow.
"""

from __future__ import annotations

import math

DEFAULT_ESTIMATE_FACTOR = 1.2


def estimate_bytes(disk_bytes: int, factor: float = DEFAULT_ESTIMATE_FACTOR) -> int:
    """Bytes of memory a version whose files hold `disk_bytes` is expected to take."""
    return math.ceil(disk_bytes * factor)


class MemoryBudget:
    """Bytes reserved by versions that are LOADING, AVAILABLE or UNLOADING.

    `budget_bytes` 0 means no limit (reservations are still counted, for the
    metrics). Not thread-safe: the manager calls it from its event loop.
    """

    def __init__(self, budget_bytes: int = 0) -> None:
        if budget_bytes < 0:
            raise ValueError(f"memory budget is {budget_bytes} bytes; expected >= 0")
        self.budget_bytes = budget_bytes
        self.reserved_bytes = 0
        self._held: dict[object, int] = {}

    def can_ever_fit(self, nbytes: int) -> bool:
        return not self.budget_bytes or nbytes <= self.budget_bytes

    def try_reserve(self, key: object, nbytes: int) -> bool:
        """Reserve `nbytes` for `key` if they fit beside what is held; idempotent per key."""
        if key in self._held:
            return True
        if self.budget_bytes and self.reserved_bytes + nbytes > self.budget_bytes:
            return False
        self._held[key] = nbytes
        self.reserved_bytes += nbytes
        return True

    def release(self, key: object) -> None:
        """Give back what `key` holds (nothing if it holds nothing)."""
        self.reserved_bytes -= self._held.pop(key, 0)
