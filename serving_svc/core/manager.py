"""The manager: moves model versions through their lifecycle toward what the source aspires.

Each version goes START → LOADING → AVAILABLE → UNLOADING → END (TF
Serving's ManagerState); a load that fails, or that can never fit the memory
budget, goes straight to END with its error kept (code and message).

The policy preserves availability (TF Serving's AvailabilityPreservingPolicy):
new versions load beside the ones serving, and a version that is no longer
aspired is unloaded only once an aspired version of its model is AVAILABLE, or
when the model aspires nothing at all. So a version that fails to load leaves
the previous one serving; it is retried only when its files change.

Requests see only AVAILABLE versions, read at lease time on the event loop,
so the switch to a new version is atomic; an unloading version drains (the
requests holding it finish) before its servable is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from mlmesh.errors import InvalidArgument, MlmeshError, NotFound
from mlmesh.logging import get_logger

from serving_svc.core import metrics
from serving_svc.core.batch_options import BatchingOptions
from serving_svc.core.batcher import Batcher, BatchingRegistry
from serving_svc.core.load_lock import lower_thread_priority, turn_to_load
from serving_svc.core.loader import Servable, load_servable
from serving_svc.core.resources import DEFAULT_ESTIMATE_FACTOR, MemoryBudget, estimate_bytes
from serving_svc.core.source import AspiredModel, Source, SourceError

log = get_logger(__name__)

HISTORY = 8  # END versions kept per model for status


class VersionState(enum.Enum):
    START = "START"  # aspired, waiting for a load slot or for memory
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


# Error codes kept in a version's status: names of TensorFlow's (and gRPC's) status codes.
UNKNOWN = "UNKNOWN"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"


@dataclass(frozen=True)
class MemoryOptions:
    """`budget_bytes` 0 = no budget. Estimate = size of the version directory x `estimate_factor`."""

    budget_bytes: int = 0
    estimate_factor: float = DEFAULT_ESTIMATE_FACTOR


_seq = itertools.count()


@dataclass(eq=False)  # a record is an identity (a memory reservation's key), not a value
class ModelVersion:
    """One version's state. `servable` and `batcher` exist only while AVAILABLE or UNLOADING.
    `error_code`/`error` are set only for a version that ended without serving
    because of a failure (TF Serving's status of an END version)."""

    model: str
    version: int
    path: Path
    fingerprint: str
    estimate_bytes: int = 0
    state: VersionState = VersionState.START
    error_code: str = ""
    error: str = ""
    servable: Servable | None = None
    batcher: Batcher | None = None
    refs: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    seq: int = field(default_factory=lambda: next(_seq))
    waiting_logged: bool = False

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def failed(self) -> bool:
        return self.state is VersionState.END and bool(self.error_code)


@dataclass
class _Model:
    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    aspired: AspiredModel | None = None
    serving: bool = False  # last availability reported to the listener


Loader = Callable[..., Servable]
T = TypeVar("T")
# Called with (model, False) when the source first lists a model, then on every change of
# "has an AVAILABLE version".
AvailabilityListener = Callable[[str, bool], None]


class ModelManager:
    """Owns every version of every model.

    Not thread-safe: every method runs on one event loop (loads and model
    calls go to executors and come back to it), which is what makes the
    switch atomic — a request sees either the old newest version or the new.
    """

    def __init__(
        self,
        source: Source,
        *,
        poll_seconds: float = 1.0,
        batching: BatchingOptions | BatchingRegistry | None = None,
        warmup: bool = True,
        load_threads: int = 1,
        stagger_loads_s: float = 0.0,
        load_niceness: int = 0,
        memory: MemoryOptions | None = None,
        loader: Loader = load_servable,
        on_availability: AvailabilityListener | None = None,
    ) -> None:
        self._source = source
        self._poll_seconds = poll_seconds
        # Batchers come from the registry, so run-time changes (admin RPC) reach them.
        self.batching = batching if isinstance(batching, BatchingRegistry) else BatchingRegistry(batching)
        self._warmup = warmup
        self._loader = loader
        self._memory = memory or MemoryOptions()
        self._budget = MemoryBudget(self._memory.budget_bytes)
        self._on_availability = on_availability
        self._models: dict[str, _Model] = {}
        self._poll_task: asyncio.Task[None] | None = None
        # One reader of the source at a time (sources are not thread-safe; polls run in threads).
        self._source_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        # Loads are rare and CPU-heavy: a budget of their own (default one thread), so they
        # neither starve model calls nor wait behind them.
        self._load_threads = load_threads
        self._stagger_s = stagger_loads_s  # 0: replicas do not take turns (core/load_lock.py)
        self._load_niceness = load_niceness
        self._load_executor = ThreadPoolExecutor(load_threads, thread_name_prefix="model-load")
        metrics.MEMORY_BUDGET.set(self._memory.budget_bytes)

    # -- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        """Poll once and wait for the loads it started (so a restarted replica
        is ready before it reports SERVING), then keep polling in the background."""
        await self.poll_once(wait_for_loads=True)
        self._poll_task = asyncio.get_running_loop().create_task(self._poll_forever(), name="model-poll")

    async def stop(self) -> None:
        """Stop polling and unload everything; requests still holding a version finish first."""
        self._stopping = True
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
        for model in self._models.values():
            for record in list(model.versions.values()):  # _end may trim the history
                if record.state is VersionState.START:
                    self._end(model, record)
        await self._wait_tasks()  # loads in flight finish (and are dropped)
        for model in self._models.values():
            for record in list(model.versions.values()):
                if record.state is VersionState.AVAILABLE:
                    self._unload(model, record)
        await self._wait_tasks()
        self._load_executor.shutdown(wait=False, cancel_futures=True)

    async def _wait_tasks(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            try:
                await self.poll_once()
            except Exception:
                log.exception("poll failed")

    async def poll_once(self, *, wait_for_loads: bool = False) -> None:
        """Read the source and start the loads/unloads that move toward it;
        with `wait_for_loads`, return once no load is in flight or startable."""
        try:
            async with self._source_lock:
                aspired = await asyncio.get_running_loop().run_in_executor(None, self._source.poll)
        except SourceError as e:
            log.warning("repository unreadable; keeping current versions", error=str(e))
            return
        for name, model in self._models.items():
            model.aspired = aspired.get(name)  # None: the model is gone from the source
        for name in sorted(aspired.keys() - self._models.keys()):
            self._models[name] = _Model(name, aspired=aspired[name])
            if self._on_availability is not None:
                self._on_availability(name, False)  # known, not serving yet
        for name in sorted(self._models):
            self._reconcile(self._models[name])
        self._pump()
        while wait_for_loads and self._loading():
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @property
    def source(self) -> Source:
        return self._source

    async def change_source(self, change: Callable[[], T]) -> T:
        """Run `change` on the source between polls (in a thread: it may touch files), then
        poll at once and wait for the loads that started; returns what `change` returned."""
        async with self._source_lock:
            result = await asyncio.get_running_loop().run_in_executor(None, change)
        await self.poll_once(wait_for_loads=True)
        return result

    def _loading(self) -> bool:
        """A load is running (loads that wait for memory do not count: they may wait for good)."""
        for model in self._models.values():
            for record in model.versions.values():
                if record.state is VersionState.LOADING:
                    return True
        return False

    # -- the policy ------------------------------------------------------

    def _reconcile(self, model: _Model) -> None:
        if self._stopping:
            return
        wanted = {v.version: v for v in (model.aspired.versions if model.aspired else ())}
        for version, target in wanted.items():
            record = model.versions.get(version)
            if record is not None and record.state is not VersionState.END:
                continue  # on its way (or unloading: reconciled again once it ends)
            if record is not None and record.failed and record.fingerprint == target.fingerprint:
                continue  # unchanged files would fail the same way
            model.versions[version] = ModelVersion(
                model.name,
                version,
                target.path,
                target.fingerprint,
                estimate_bytes(target.disk_bytes, self._memory.estimate_factor),
            )
        aspired_available = any(
            r.state is VersionState.AVAILABLE for v, r in model.versions.items() if v in wanted
        )
        for version, record in list(model.versions.items()):
            if version in wanted:
                continue
            if record.state is VersionState.START:
                self._end(model, record)
            elif record.state is VersionState.AVAILABLE and (aspired_available or not wanted):
                self._unload(model, record)
            # LOADING: decided when the load finishes.
        self._update(model)

    def _pump(self) -> None:
        """Start pending loads, oldest first, while load threads are free and memory allows."""
        if self._stopping:
            return
        records = [(m, r) for m in self._models.values() for r in m.versions.values()]
        loading = sum(1 for _, r in records if r.state is VersionState.LOADING)
        pending = sorted(
            ((m, r) for m, r in records if r.state is VersionState.START), key=lambda mr: mr[1].seq
        )
        for model, record in pending:
            if loading >= self._load_threads:
                break
            if not self._budget.can_ever_fit(record.estimate_bytes):
                self._fail(
                    model,
                    record,
                    RESOURCE_EXHAUSTED,
                    f"version {record.version} of model {model.name!r} needs an estimated "
                    f"{record.estimate_bytes} bytes ({self._memory.estimate_factor} x its files), "
                    f"more than the whole memory budget of {self._budget.budget_bytes} bytes",
                )
                continue
            if not self._budget.try_reserve(record, record.estimate_bytes):
                if not record.waiting_logged:
                    record.waiting_logged = True
                    log.warning(
                        "load waits for memory",
                        model=model.name,
                        version=record.version,
                        estimate_bytes=record.estimate_bytes,
                        reserved_bytes=self._budget.reserved_bytes,
                        budget_bytes=self._budget.budget_bytes,
                    )
                continue
            record.state = VersionState.LOADING
            loading += 1
            self._spawn(self._load(model, record), f"load-{model.name}-{record.version}")
            self._update(model)
        metrics.MEMORY_RESERVED.set(self._budget.reserved_bytes)

    def _spawn(self, coro: object, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self, model: _Model, record: ModelVersion) -> None:
        log.info("loading", model=model.name, version=record.version, path=str(record.path))
        started = time.perf_counter()
        # A replacement takes its turn with the other replicas (the first version does not
        # wait: there is nothing to serve meanwhile).
        replacing = any(v.state is VersionState.AVAILABLE for v in model.versions.values())
        stagger_s = self._stagger_s if replacing else 0.0

        def load() -> Servable:
            if self._load_niceness:
                lower_thread_priority(self._load_niceness)
            with turn_to_load(record.path.parent, stagger_s) as waited:
                if waited > 0.01:
                    log.info("waited for another replica's load", model=model.name, seconds=round(waited, 3))
                return self._loader(model.name, record.version, record.path, warmup=self._warmup)

        try:
            servable = await asyncio.get_running_loop().run_in_executor(self._load_executor, load)
        except Exception as e:
            code = e.status if isinstance(e, MlmeshError) else getattr(e, "error_code", UNKNOWN)
            self._fail(model, record, str(code), str(e))
            self._after_change(model)
            return
        metrics.LOADS.labels(model.name, "ok").inc()
        metrics.LOAD_SECONDS.labels(model.name).observe(time.perf_counter() - started)
        wanted = model.aspired is not None and any(
            v.version == record.version for v in model.aspired.versions
        )
        if self._stopping or not wanted:
            log.info("loaded version no longer aspired; dropped", model=model.name, version=record.version)
            self._end(model, record)  # never served: nobody can hold it
            self._after_change(model)
            return
        record.servable = servable
        # Each batcher runs its model calls on its own num_batch_threads threads.
        record.batcher = self.batching.create(servable, model=model.name, batch_cap=servable.max_batch)
        record.state = VersionState.AVAILABLE  # the switch: the next lease may pick it
        log.info(
            "version available",
            model=model.name,
            version=record.version,
            load_seconds=round(time.perf_counter() - started, 3),
        )
        self._after_change(model)

    def _fail(self, model: _Model, record: ModelVersion, code: str, message: str) -> None:
        record.error_code, record.error = code, message
        outcome = "resource_exhausted" if code == RESOURCE_EXHAUSTED else "failed"
        metrics.LOADS.labels(model.name, outcome).inc()
        log.warning("load failed", model=model.name, version=record.version, code=code, error=message)
        self._end(model, record)

    def _end(self, model: _Model, record: ModelVersion) -> None:
        record.state = VersionState.END
        record.servable = None  # the last reference: TensorFlow frees the graph and variables
        record.batcher = None
        self._budget.release(record)
        metrics.MEMORY_RESERVED.set(self._budget.reserved_bytes)
        self._trim_history(model)
        self._update(model)

    def _after_change(self, model: _Model) -> None:
        """A load or unload finished: move on toward the aspired state."""
        self._reconcile(model)
        self._pump()
        self._update(model)

    def _unload(self, model: _Model, record: ModelVersion) -> None:
        record.state = VersionState.UNLOADING
        self._update(model)
        self._spawn(self._drain_and_unload(model, record), f"unload-{model.name}-{record.version}")

    async def _drain_and_unload(self, model: _Model, record: ModelVersion) -> None:
        await record.idle.wait()  # requests holding this version finish first
        if record.batcher is not None:
            await record.batcher.close()
        self._end(model, record)
        metrics.UNLOADS.labels(model.name).inc()
        log.info("version unloaded", model=model.name, version=record.version)
        self._after_change(model)  # memory freed: a waiting load may start

    def _update(self, model: _Model) -> None:
        """Metrics and the availability listener, after any state change."""
        counts = dict.fromkeys(VersionState, 0)
        for record in model.versions.values():
            counts[record.state] += 1
        for state, n in counts.items():
            metrics.VERSIONS.labels(model.name, state.value).set(n)
        metrics.LOADED_VERSIONS.labels(model.name).set(counts[VersionState.AVAILABLE])
        serving = counts[VersionState.AVAILABLE] > 0
        if serving != model.serving:
            model.serving = serving
            if self._on_availability is not None:
                self._on_availability(model.name, serving)

    def _trim_history(self, model: _Model) -> None:
        done = [v for v in model.versions.values() if v.state is VersionState.END]
        for old in sorted(done, key=lambda v: v.seq)[: max(0, len(done) - HISTORY)]:
            del model.versions[old.version]

    # -- requests --------------------------------------------------------

    @contextlib.contextmanager
    def lease(self, model_name: str, version: int = 0, label: str = "") -> Iterator[ModelVersion]:
        """Hold an AVAILABLE version for one request: the newest for version 0
        and no label, else the given version, or the one a version label points
        to. It is not unloaded before the lease ends. NotFound names what was
        asked for and what is available; InvalidArgument if both a version and
        a label are given."""
        record = self._find(model_name, version, label)
        record.refs += 1
        record.idle.clear()
        try:
            yield record
        finally:
            record.refs -= 1
            if record.refs == 0:
                record.idle.set()

    def _find(self, model_name: str, version: int, label: str) -> ModelVersion:
        if version and label:
            raise InvalidArgument(f"give a version ({version}) or a label ({label!r}), not both")
        model = self._models.get(model_name)
        available = self._available_versions(model) if model is not None else []
        if model is None or (not available and not version and not label):
            known = (
                "; ".join(f"version {r.version} {_describe(r)}" for r in self.status(model_name))
                if model
                else ""
            )
            raise NotFound(
                f"model {model_name!r} is not available (unknown or not loaded yet); "
                f"available models: {sorted(self.available()) or 'none'}" + (f" ({known})" if known else "")
            )
        if label:
            labels = self.labels(model_name)
            if label not in labels:
                raise NotFound(
                    f"model {model_name!r} has no version label {label!r}; labels: {labels or 'none'}"
                )
            record = model.versions.get(labels[label])
            if record is None or record.state is not VersionState.AVAILABLE:
                raise NotFound(
                    f"model {model_name!r} label {label!r} points to version {labels[label]}, which "
                    f"{_describe(record)}; available versions: {available or 'none'}"
                )
            return record
        if not version:
            return model.versions[available[0]]
        record = model.versions.get(version)
        if record is None or record.state is not VersionState.AVAILABLE:
            raise NotFound(
                f"model {model_name!r} version {version} {_describe(record)}; "
                f"available versions: {available or 'none'} (or 0 for the newest)"
            )
        return record

    @staticmethod
    def _available_versions(model: _Model) -> list[int]:
        return sorted(
            (v for v, r in model.versions.items() if r.state is VersionState.AVAILABLE), reverse=True
        )

    def available(self) -> dict[str, int]:
        """Model name → the version that answers version-0 requests (its newest AVAILABLE)."""
        out = {}
        for name, model in self._models.items():
            versions = self._available_versions(model)
            if versions:
                out[name] = versions[0]
        return out

    def labels(self, model_name: str) -> dict[str, int]:
        """The model's version labels (label → version) as the source configures them;
        empty for an unknown model or one without labels."""
        model = self._models.get(model_name)
        if model is None or model.aspired is None:
            return {}
        return dict(model.aspired.labels)

    def status(self, model_name: str) -> list[ModelVersion]:
        """Versions the manager knows of for a model, newest first. NotFound if
        the source has never listed the model."""
        model = self._models.get(model_name)
        if model is None:
            raise NotFound(
                f"model {model_name!r} is not in the repository; "
                f"known models: {sorted(self._models) or 'none'}"
            )
        return sorted(model.versions.values(), key=lambda v: v.version, reverse=True)


def _describe(record: ModelVersion | None) -> str:
    if record is None:
        return "is not loaded"
    if record.failed:
        return f"failed to load ({record.error_code}: {record.error})"
    return f"is {record.state.value}"
