"""Stream a simulated fleet into an ingest dataset at a paced rate, one partition per chunk."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mlmesh.clients import IngestClient
from mlmesh.data.train_failures import SCHEMA, FleetSimulator, bytes_per_simulated_hour
from mlmesh.ingest.v1 import ingest_pb2
from mlmesh.tensor import dtype_from_name

MIN_PARTITION_BYTES = 4096  # ingest's lower bound on max_partition_bytes


def raw_schema() -> ingest_pb2.DatasetSchema:
    """The ingest schema of the simulator's readings (`train_failures.SCHEMA`)."""
    return ingest_pb2.DatasetSchema(
        features=[
            ingest_pb2.FeatureSpec(name=name, dtype=dtype_from_name(dtype), shape=list(shape))
            for name, (dtype, shape) in SCHEMA.items()
        ]
    )


def partition_bytes_for_chunk(components: int, chunk_minutes: int) -> int:
    """A partition bound one chunk fits in whole (ingest cuts an Append at this bound)."""
    return max(MIN_PARTITION_BYTES, bytes_per_simulated_hour(components) * chunk_minutes // 60)


@dataclass(frozen=True)
class StreamStats:
    chunks: int = 0
    records: int = 0
    bytes: int = 0
    simulated_minutes: int = 0
    lag_seconds: float = 0.0  # how late the last chunk was against its schedule
    max_lag_seconds: float = 0.0

    @property
    def simulated_hours(self) -> float:
        return self.simulated_minutes / 60.0


class FleetStreamer(threading.Thread):
    """Appends `sim`'s next `chunk_minutes` simulated minutes to `dataset` every
    `chunk_minutes / simulated_minutes_per_second` wall seconds, each chunk in one Append
    (so one partition, given `partition_bytes_for_chunk`), from `start()` until `stop` is set.

    A chunk is sent when its last simulated minute is due, never early; a machine too busy to
    keep up sends the late chunks back to back and reports the lag (`stats().lag_seconds`).
    `append_next()` sends one chunk at once, e.g. to prime the pipeline before the clock starts
    (not while the thread runs: the simulator is not thread-safe). The first failure ends the
    thread and is kept in `error`. `stats()` is safe from any thread.
    """

    def __init__(
        self,
        ingest_addr: str,
        dataset: str,
        sim: FleetSimulator,
        *,
        chunk_minutes: int,
        simulated_minutes_per_second: float,
        stop: threading.Event,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name="fleet-streamer", daemon=True)
        if chunk_minutes < 1 or simulated_minutes_per_second <= 0:
            raise ValueError(
                f"chunk_minutes = {chunk_minutes} must be >= 1 and simulated_minutes_per_second = "
                f"{simulated_minutes_per_second} > 0"
            )
        self.addr = ingest_addr
        self.dataset = dataset
        self.sim = sim
        self.chunk_minutes = chunk_minutes
        self.seconds_per_chunk = chunk_minutes / simulated_minutes_per_second
        self.stop_event = stop
        self.clock = clock
        self.error: BaseException | None = None
        self._stats = StreamStats()
        self._lock = threading.Lock()

    def stats(self) -> StreamStats:
        with self._lock:
            return self._stats

    def append_next(self, client: IngestClient | None = None, due: float | None = None) -> None:
        """Append the next chunk now (one Append: all of it or nothing)."""
        if client is None:
            with IngestClient(self.addr, timeout=60.0) as own:
                self.append_next(own, due)
            return
        chunk = self.sim.next_chunk(self.chunk_minutes)
        client.append(self.dataset, [chunk], timeout=60.0)
        lag = max(0.0, self.clock() - due) if due is not None else 0.0
        with self._lock:
            s = self._stats
            self._stats = StreamStats(
                chunks=s.chunks + 1,
                records=s.records + len(chunk["t"]),
                bytes=s.bytes + sum(a.nbytes for a in chunk.values()),
                simulated_minutes=s.simulated_minutes + self.chunk_minutes,
                lag_seconds=lag,
                max_lag_seconds=max(s.max_lag_seconds, lag),
            )

    def run(self) -> None:
        try:
            with IngestClient(self.addr, timeout=60.0) as client:
                start = self.clock()
                k = 1
                while not self.stop_event.is_set():
                    due = start + k * self.seconds_per_chunk
                    if self.stop_event.wait(max(0.0, due - self.clock())):
                        break
                    self.append_next(client, due)
                    k += 1
        except BaseException as e:  # kept for the caller: a thread has no one else to tell
            self.error = e
