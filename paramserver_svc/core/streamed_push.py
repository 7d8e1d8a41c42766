"""A dense push applied piece by piece while its stream is still arriving.

A PushStream of dense gradients would otherwise be assembled into one buffer,
checked for NaN/Inf, and only then run through the update rule: three passes
over the bytes after the last chunk lands. Here each data chunk, as it
arrives, is checked and turned into its elements' new value and new slots,
written into fresh arrays: the arithmetic overlaps the transfer and the
gradient is never copied into an assembly buffer.

All or nothing is kept: nothing is written into the variable while the
stream arrives (values are copy-on-write and the slots are computed into new
arrays too), and the new arrays are swapped in, under the job's lock, only
when the whole stream arrived, every chunk was finite and nothing else
updated those variables meanwhile (`Shard.finish_streamed_push`). A stream
that breaks off, a NaN/Inf in any chunk, or a stream with too few bytes
leaves the variables as they were.

It fits only pushes whose effect is known on arrival: dense variables,
element-wise rules, ASYNC/BOUNDED jobs (SYNC sums the step's pushes first;
exactly-once stages pushes per lease). `Shard.open_streamed_push` decides;
everything else takes the assembled path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from mlmesh.tensor import StreamLayout

from paramserver_svc.core.finite import all_finite
from paramserver_svc.core.store import Job, Variable
from paramserver_svc.core.update_rules import Slots, UpdateRule


@dataclass
class _Target:
    """One variable of the push: its value and slots as they were at the start (read only),
    and the fresh arrays its new value and slots go into (all flat)."""

    name: str
    var: Variable
    dtype: np.dtype
    offset: int  # where its bytes start in the stream
    nbytes: int
    base_value: np.ndarray  # var.value when the push opened (identity checked at the end)
    t: int  # the update's number for this variable (Adam's bias correction)
    value: np.ndarray = field(init=False)
    slots: Slots = field(init=False)
    new_value: np.ndarray = field(init=False)
    new_slots: Slots = field(init=False)
    received: int = 0

    def __post_init__(self) -> None:
        self.value = self.base_value.reshape(-1)
        self.slots = {k: s.reshape(-1) for k, s in self.var.slots.items()}
        self.new_value = np.empty_like(self.value)
        self.new_slots = {k: np.empty_like(s) for k, s in self.slots.items()}


class StreamedPush:
    """The state of one dense push being applied as it arrives. `feed` is called with each
    data chunk in stream order (from one thread at a time, without the job's lock: it reads
    only arrays nobody writes and writes only its own); the shard installs the result."""

    def __init__(
        self, job: Job, worker_id: str, step: int, layout: StreamLayout, variables: list[Variable]
    ) -> None:
        self.job = job
        self.job_id = job.job_id
        self.worker_id = worker_id
        self.step = step
        self.layout = layout
        self.rule: UpdateRule = job.rule
        self._targets = [
            _Target(
                name,
                var,
                dt,
                offset,
                dt.itemsize * int(np.prod(shape, dtype=np.int64)),
                var.value,
                var.updates + 1,
            )
            for (name, dt, shape, offset), var in zip(layout.entries, variables, strict=True)
        ]
        self._current = 0
        self._filled = 0
        self._carry = bytearray()  # the start of an element split between two chunks
        # The chunks themselves (views on the received messages, no copy): the gradient, should
        # the push have to be applied the ordinary way after all (see `gradients`).
        self._chunks: list[memoryview] = []
        self.nonfinite: str | None = None  # the first variable whose gradient has NaN/Inf

    @property
    def nbytes(self) -> int:
        return self.layout.total

    def feed(self, data: memoryview) -> None:
        """Take the next chunk: check it and compute its elements' new values."""
        self.layout.check_feed(self._filled, len(data))
        self._chunks.append(data)
        pos = 0
        while pos < len(data):
            tgt = self._targets[self._current]
            left = tgt.offset + tgt.nbytes - self._filled
            if left == 0:
                self._current += 1
                continue
            take = min(len(data) - pos, left)
            self._consume(tgt, data[pos : pos + take])
            pos += take
            self._filled += take

    def _consume(self, tgt: _Target, piece: memoryview) -> None:
        size = tgt.dtype.itemsize
        k, partial = divmod(tgt.received, size)
        tgt.received += len(piece)
        if partial:  # finish element k, begun in the previous chunk
            need = size - partial
            self._carry += piece[:need]
            if len(piece) < need:
                return
            self._compute(tgt, k, bytes(self._carry))
            self._carry = bytearray()
            piece = piece[need:]
            k += 1
        whole = len(piece) - len(piece) % size
        if whole:
            self._compute(tgt, k, piece[:whole])
        if whole < len(piece):
            self._carry = bytearray(piece[whole:])

    def _compute(self, tgt: _Target, first: int, data: bytes | memoryview) -> None:
        if self.nonfinite is not None:
            return  # nothing of this push will apply: only count the bytes
        grad = np.frombuffer(data, dtype=tgt.dtype)
        if not all_finite(grad):
            self.nonfinite = tgt.name
            return
        e = slice(first, first + len(grad))
        self.rule.apply_dense_to(
            tgt.value[e],
            {k: s[e] for k, s in tgt.slots.items()},
            grad,
            tgt.t,
            tgt.new_value[e],
            {k: s[e] for k, s in tgt.new_slots.items()},
        )

    def check_complete(self) -> None:
        """InvalidArgument unless the stream carried exactly the headers' bytes."""
        self.layout.check_finished(self._filled)

    def current(self, job: Job) -> bool:
        """Whether the result still applies: the job and each variable are as they were when
        the push opened (no other update, no checkpoint restore in between). Lock held."""
        if job.rule is not self.rule:
            return False
        for tgt in self._targets:
            var = job.variables.get(tgt.name)
            if var is not tgt.var or var.value is not tgt.base_value or var.updates != tgt.t - 1:
                return False
        return True

    def install(self, job: Job) -> None:
        """Make the computed arrays the variables' values and slots: one update (lock held,
        `current(job)` true, every chunk finite)."""
        for tgt in self._targets:
            shape = tgt.base_value.shape
            tgt.var.updates += 1
            tgt.var.replace(tgt.new_value.reshape(shape))
            tgt.var.slots = {k: s.reshape(shape) for k, s in tgt.new_slots.items()}
        job.version += 1
        job.generation += 1

    def gradients(self) -> dict[str, np.ndarray]:
        """The pushed gradients as arrays (one copy): for applying the ordinary way."""
        buf = np.frombuffer(b"".join(self._chunks), dtype=np.uint8)
        return {
            name: buf[offset : offset + dt.itemsize * int(np.prod(shape, dtype=np.int64))]
            .view(dt)
            .reshape(shape)
            for name, dt, shape, offset in self.layout.entries
        }


def _nbytes(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    return dtype.itemsize * int(np.prod(shape, dtype=np.int64))
