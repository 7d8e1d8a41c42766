"""The manager: moves model versions through their lifecycle toward what the source aspires.

Each version goes LOADING → AVAILABLE → UNLOADING → END, or LOADING → FAILED.
The policy preserves availability: a new version is loaded beside the
current one, warmed up, made current in one assignment (the switch), and
only then is the old one unloaded — after the requests that hold it finish.
A version that fails to load leaves the current one serving; it is retried
only when its files change.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mlmesh.errors import NotFound
from mlmesh.logging import get_logger

from serving_svc.core import metrics
from serving_svc.core.batch_options import BatchingOptions
from serving_svc.core.batcher import Batcher, BatchingRegistry
from serving_svc.core.loader import Servable, load_servable
from serving_svc.core.source import AspiredVersion, RepositorySource, SourceError

log = get_logger(__name__)

HISTORY = 8  # finished (END/FAILED) versions kept per model for GetModelStatus


class VersionState(enum.Enum):
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"
    FAILED = "FAILED"


@dataclass
class ModelVersion:
    """One version's state; `servable` and `batcher` exist only while AVAILABLE or UNLOADING."""

    model: str
    version: int
    path: Path
    fingerprint: str
    state: VersionState = VersionState.LOADING
    error: str = ""
    servable: Servable | None = None
    batcher: Batcher | None = None
    refs: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()


@dataclass
class _Model:
    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    current: ModelVersion | None = None
    aspired: AspiredVersion | None = None
    loading: asyncio.Task[None] | None = None


Loader = Callable[..., Servable]


class ModelManager:
    """Owns every loaded version of every model.

    Not thread-safe: every method runs on one event loop (loads and model
    calls go to executors and come back to it), which is what makes the
    switch atomic — a request sees either the old current version or the new.
    """

    def __init__(
        self,
        source: RepositorySource,
        *,
        poll_seconds: float = 1.0,
        batching: BatchingOptions | BatchingRegistry | None = None,
        warmup: bool = True,
        loader: Loader = load_servable,
    ) -> None:
        self._source = source
        self._poll_seconds = poll_seconds
        # Batchers come from the registry, so run-time changes (admin RPC) reach them.
        self.batching = batching if isinstance(batching, BatchingRegistry) else BatchingRegistry(batching)
        self._warmup = warmup
        self._loader = loader
        self._models: dict[str, _Model] = {}
        self._poll_task: asyncio.Task[None] | None = None
        self._unloads: set[asyncio.Task[None]] = set()
        self._stopping = False
        # One loader thread: loads are rare and CPU-heavy; they must not starve model calls.
        self._load_executor = ThreadPoolExecutor(1, thread_name_prefix="model-load")

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
        loads = [m.loading for m in self._models.values() if m.loading is not None]
        if loads:
            await asyncio.gather(*loads, return_exceptions=True)
        for model in self._models.values():
            if model.current is not None:
                self._schedule_unload(model, model.current)
                model.current = None
        if self._unloads:
            await asyncio.gather(*list(self._unloads), return_exceptions=True)
        self._load_executor.shutdown(wait=False, cancel_futures=True)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            try:
                await self.poll_once()
            except Exception:
                log.exception("poll failed")

    async def poll_once(self, *, wait_for_loads: bool = False) -> None:
        """Read the source and start the loads/unloads that move toward it;
        with `wait_for_loads`, return once every load in flight has finished."""
        try:
            aspired = await asyncio.get_running_loop().run_in_executor(None, self._source.poll)
        except SourceError as e:
            log.warning("repository unreadable; keeping current versions", error=str(e))
            return
        for name in set(self._models) - set(aspired):
            aspired[name] = None  # the model's directory is gone
        for name, target in sorted(aspired.items()):
            model = self._models.setdefault(name, _Model(name))
            model.aspired = target
            self._reconcile(model)
        while wait_for_loads and (loads := [m.loading for m in self._models.values() if m.loading]):
            await asyncio.gather(*loads, return_exceptions=True)

    def _reconcile(self, model: _Model) -> None:
        if self._stopping or model.loading is not None:
            return  # a finishing load re-runs this
        target = model.aspired
        if target is None:
            if model.current is not None:
                log.info(
                    "model has no loadable version; unloading",
                    model=model.name,
                    version=model.current.version,
                )
                old, model.current = model.current, None
                self._schedule_unload(model, old)
            return
        if model.current is not None and model.current.version == target.version:
            return
        existing = model.versions.get(target.version)
        if (
            existing is not None
            and existing.state is VersionState.FAILED
            and existing.fingerprint == target.fingerprint
        ):
            return  # unchanged files would fail the same way
        if existing is not None and existing.state in (VersionState.UNLOADING, VersionState.LOADING):
            return  # wait for it to finish before loading the same version again
        record = ModelVersion(model.name, target.version, target.path, target.fingerprint)
        model.versions[target.version] = record
        model.loading = asyncio.get_running_loop().create_task(
            self._load(model, record), name=f"load-{model.name}-{target.version}"
        )

    async def _load(self, model: _Model, record: ModelVersion) -> None:
        log.info("loading", model=model.name, version=record.version, path=str(record.path))
        started = time.perf_counter()
        try:
            servable = await asyncio.get_running_loop().run_in_executor(
                self._load_executor,
                lambda: self._loader(model.name, record.version, record.path, warmup=self._warmup),
            )
        except Exception as e:
            record.state, record.error = VersionState.FAILED, str(e)
            metrics.LOADS.labels(model.name, "failed").inc()
            log.warning("load failed", model=model.name, version=record.version, error=record.error)
            self._finish_load(model)
            return
        metrics.LOADS.labels(model.name, "ok").inc()
        metrics.LOAD_SECONDS.labels(model.name).observe(time.perf_counter() - started)
        still_wanted = model.aspired is not None and model.aspired.version == record.version
        if self._stopping or not still_wanted:
            record.state = VersionState.END  # superseded while loading; never served
            log.info("loaded version no longer aspired; dropped", model=model.name, version=record.version)
            self._finish_load(model)
            return
        record.servable = servable
        # Each batcher runs its model calls on its own num_batch_threads threads.
        record.batcher = self.batching.create(servable, model=model.name, batch_cap=servable.max_batch)
        old, model.current = model.current, record
        record.state = VersionState.AVAILABLE
        log.info(
            "version available",
            model=model.name,
            version=record.version,
            replaced=old.version if old else None,
            load_seconds=round(time.perf_counter() - started, 3),
        )
        if old is not None:
            self._schedule_unload(model, old)
        self._finish_load(model)

    def _finish_load(self, model: _Model) -> None:
        model.loading = None
        self._update_gauge(model)
        self._trim_history(model)
        self._reconcile(model)

    def _schedule_unload(self, model: _Model, record: ModelVersion) -> None:
        record.state = VersionState.UNLOADING
        self._update_gauge(model)
        task = asyncio.get_running_loop().create_task(
            self._unload(model, record), name=f"unload-{model.name}-{record.version}"
        )
        self._unloads.add(task)
        task.add_done_callback(self._unloads.discard)

    async def _unload(self, model: _Model, record: ModelVersion) -> None:
        await record.idle.wait()  # requests holding this version finish first
        if record.batcher is not None:
            await record.batcher.close()
        record.batcher = None
        record.servable = None  # the last reference: TensorFlow frees the graph and variables
        record.state = VersionState.END
        log.info("version unloaded", model=model.name, version=record.version)
        self._trim_history(model)

    def _update_gauge(self, model: _Model) -> None:
        metrics.LOADED_VERSIONS.labels(model.name).set(
            sum(1 for v in model.versions.values() if v.state is VersionState.AVAILABLE)
        )

    def _trim_history(self, model: _Model) -> None:
        done = [v for v in model.versions.values() if v.state in (VersionState.END, VersionState.FAILED)]
        for old in sorted(done, key=lambda v: v.version)[: max(0, len(done) - HISTORY)]:
            del model.versions[old.version]

    # -- requests --------------------------------------------------------

    @contextlib.contextmanager
    def lease(self, model_name: str, version: int = 0) -> Iterator[ModelVersion]:
        """Hold an AVAILABLE version (the current one for version 0) for one
        request; it is not unloaded before the lease ends. NotFound names the
        model and what is available."""
        record = self._find(model_name, version)
        record.refs += 1
        record.idle.clear()
        try:
            yield record
        finally:
            record.refs -= 1
            if record.refs == 0:
                record.idle.set()

    def _find(self, model_name: str, version: int) -> ModelVersion:
        model = self._models.get(model_name)
        current = model.current if model is not None else None
        if current is None:
            available = self.available()
            raise NotFound(
                f"model {model_name!r} is not available (unknown or not loaded yet); "
                f"available models: {sorted(available) or 'none'}"
            )
        if version and version != current.version:
            record = model.versions.get(version) if model is not None else None
            why = f"is {record.state.value}" if record is not None else "is not loaded"
            raise NotFound(
                f"model {model_name!r} version {version} {why}; available version: {current.version} "
                "(or 0 for the newest)"
            )
        return current

    def available(self) -> dict[str, int]:
        """Model name → the version that answers version-0 requests."""
        return {name: m.current.version for name, m in self._models.items() if m.current is not None}

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
