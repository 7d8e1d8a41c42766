"""Version lifecycle: load beside, switch, drain, unload; failures keep the old version serving."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from mlmesh.errors import InvalidArgument, NotFound

from serving_svc.core.loader import Servable, load_servable
from serving_svc.core.manager import MemoryOptions, ModelManager, VersionState
from serving_svc.core.policy import Latest
from serving_svc.core.source import ConfigFileSource, RepositorySource, Source, scan
from serving_svc.tests.conftest import Exports
from serving_svc.tests.helpers import copy_version

pytestmark = pytest.mark.unit
T = TypeVar("T")


class CountingLoader:
    """The real loader, counting how often each version is attempted."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, int]] = []

    def __call__(self, model: str, version: int, path: Path, **kwargs: Any) -> Servable:
        self.attempts.append((model, version))
        return load_servable(model, version, path, **kwargs)


def run(
    repo: Path | Source,
    scenario: Callable[[ModelManager], Awaitable[T]],
    loader: Any = load_servable,
    **options: Any,
) -> T:
    """Run `scenario` against a started manager (no background polls: tests call `settle`)."""

    async def main() -> T:
        source = RepositorySource(repo) if isinstance(repo, Path) else repo
        manager = ModelManager(source, poll_seconds=3600, loader=loader, **options)
        await manager.start()
        try:
            return await scenario(manager)
        finally:
            await manager.stop()

    return asyncio.run(main())


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def settle(manager: ModelManager) -> None:
    await manager.poll_once(wait_for_loads=True)


def states(manager: ModelManager, model: str) -> dict[int, VersionState]:
    return {v.version: v.state for v in manager.status(model)}


def test_start_loads_the_newest_version_before_returning(tmp_path: Path, exports: Exports) -> None:
    copy_version(exports.image_v1, tmp_path, "image", 1)
    copy_version(exports.image_v2, tmp_path, "image", 2)

    async def scenario(manager: ModelManager) -> None:
        assert manager.available() == {"image": 2}
        assert states(manager, "image") == {2: VersionState.AVAILABLE}

    run(tmp_path, scenario)


def test_new_version_switches_and_old_one_drains_before_unloading(tmp_path: Path, exports: Exports) -> None:
    copy_version(exports.image_v1, tmp_path, "image", 1)
    image = np.full((1, 28, 28), 128, np.float32)

    async def scenario(manager: ModelManager) -> None:
        with manager.lease("image") as old:
            assert old.version == 1
            copy_version(exports.image_v2, tmp_path, "image", 2)
            await settle(manager)
            assert manager.available() == {"image": 2}
            assert states(manager, "image") == {2: VersionState.AVAILABLE, 1: VersionState.UNLOADING}
            # The request holding version 1 still gets its answer from version 1.
            assert old.batcher is not None
            out = await old.batcher.submit({"image": image}, 1)
            np.testing.assert_allclose(
                out["probabilities"], exports.model_v1.predict(image), rtol=1e-5, atol=1e-6
            )
            with manager.lease("image") as new:
                assert new.version == 2
        await until(lambda: states(manager, "image")[1] is VersionState.END)
        assert old.servable is None and old.batcher is None

    run(tmp_path, scenario)


def test_failed_version_leaves_current_serving_and_is_retried_only_when_its_files_change(
    tmp_path: Path, exports: Exports
) -> None:
    copy_version(exports.image_v1, tmp_path, "image", 1)
    loader = CountingLoader()

    async def scenario(manager: ModelManager) -> None:
        broken = tmp_path / "image" / "2"
        (broken / "variables").mkdir(parents=True)
        (broken / "saved_model.pb").write_bytes(b"truncated export")
        await settle(manager)
        status = {v.version: v for v in manager.status("image")}
        assert (status[2].state, status[2].error_code, status[2].failed) == (
            VersionState.END,
            "UNKNOWN",
            True,
        )
        assert "cannot load SavedModel" in status[2].error
        assert manager.available() == {"image": 1}
        await settle(manager)
        assert loader.attempts.count(("image", 2)) == 1  # same files: not retried
        shutil.rmtree(broken)
        copy_version(exports.image_v2, tmp_path, "image", 2)
        await settle(manager)
        assert loader.attempts.count(("image", 2)) == 2
        assert manager.available() == {"image": 2}

    run(tmp_path, scenario, loader)


def test_removed_model_directory_unloads_the_model(tmp_path: Path, exports: Exports) -> None:
    copy_version(exports.image_v1, tmp_path, "image", 1)

    async def scenario(manager: ModelManager) -> None:
        shutil.rmtree(tmp_path / "image")
        await settle(manager)
        await until(lambda: states(manager, "image") == {1: VersionState.END})
        with pytest.raises(NotFound, match="model 'image' is not available"), manager.lease("image"):
            pass

    run(tmp_path, scenario)


def test_model_appearing_later_is_loaded_by_a_poll(tmp_path: Path, exports: Exports) -> None:
    async def scenario(manager: ModelManager) -> None:
        assert manager.available() == {}
        copy_version(exports.multi, tmp_path, "multi", 1)
        await settle(manager)
        assert manager.available() == {"multi": 1}

    run(tmp_path, scenario)


def test_lease_of_unknown_model_or_version_is_not_found(tmp_path: Path, exports: Exports) -> None:
    copy_version(exports.image_v1, tmp_path, "image", 1)

    async def scenario(manager: ModelManager) -> None:
        with (
            pytest.raises(NotFound, match=r"model 'nope' is not available .* available models: \['image'\]"),
            manager.lease("nope"),
        ):
            pass
        with (
            pytest.raises(
                NotFound, match=r"model 'image' version 7 is not loaded; available versions: \[1\]"
            ),
            manager.lease("image", 7),
        ):
            pass
        with manager.lease("image", 1) as record:
            assert record.refs == 1
        assert record.refs == 0
        with pytest.raises(
            NotFound, match="model 'nope' is not in the repository; known models: \\['image'\\]"
        ):
            manager.status("nope")

    run(tmp_path, scenario)


def test_stop_unloads_every_version(tmp_path: Path, exports: Exports) -> None:
    copy_version(exports.image_v1, tmp_path, "image", 1)

    async def main() -> ModelManager:
        manager = ModelManager(RepositorySource(tmp_path), poll_seconds=3600)
        await manager.start()
        await manager.stop()
        return manager

    manager = asyncio.run(main())
    record = manager.status("image")[0]
    assert record.state is VersionState.END and record.servable is None


def test_half_written_version_ends_with_its_error_and_the_previous_keeps_serving(
    tmp_path: Path, exports: Exports
) -> None:
    copy_version(exports.image_v1, tmp_path, "image", 1)

    async def scenario(manager: ModelManager) -> None:
        half = copy_version(exports.image_v2, tmp_path, "image", 2)
        shutil.rmtree(half / "variables")  # the graph is there, the weights are not
        await settle(manager)
        record = manager.status("image")[0]
        assert (record.version, record.state, record.error_code) == (2, VersionState.END, "UNKNOWN")
        assert record.error
        with manager.lease("image") as serving:
            assert serving.version == 1
        with (
            pytest.raises(NotFound, match=r"version 2 failed to load \(UNKNOWN: "),
            manager.lease("image", 2),
        ):
            pass

    run(tmp_path, scenario)


def test_empty_repository_is_not_found_with_a_message(tmp_path: Path) -> None:
    async def scenario(manager: ModelManager) -> None:
        assert manager.available() == {}
        with (
            pytest.raises(NotFound, match=r"model 'fashion' is not available .*available models: none"),
            manager.lease("fashion"),
        ):
            pass

    run(tmp_path / "repo", scenario)


def test_latest_two_keeps_two_versions_available_and_version_zero_is_the_newest(
    tmp_path: Path, exports: Exports
) -> None:
    copy_version(exports.image_v1, tmp_path, "image", 1)
    copy_version(exports.image_v2, tmp_path, "image", 2)

    async def scenario(manager: ModelManager) -> None:
        assert states(manager, "image") == {2: VersionState.AVAILABLE, 1: VersionState.AVAILABLE}
        with manager.lease("image") as newest, manager.lease("image", 1) as older:
            assert (newest.version, older.version) == (2, 1)
        copy_version(exports.image_v1, tmp_path, "image", 3)
        await settle(manager)
        # v2 stays AVAILABLE throughout, so v1 unloads without waiting for v3.
        await until(lambda: states(manager, "image")[1] is VersionState.END)
        assert states(manager, "image") == {
            3: VersionState.AVAILABLE,
            2: VersionState.AVAILABLE,
            1: VersionState.END,
        }

    run(RepositorySource(tmp_path, policy=Latest(2)), scenario)


MODELS = """
model_config_list {
  config {
    name: "image" base_path: "image" model_version_policy { all {} }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
    version_labels { key: "next" value: 3 }
  }
  config { name: "multi" base_path: "store/multi" }
}
"""


def test_labels_resolve_to_available_versions_and_name_what_is_missing(
    tmp_path: Path, exports: Exports
) -> None:
    copy_version(exports.image_v1, tmp_path, "image", 1)
    copy_version(exports.image_v2, tmp_path, "image", 2)
    copy_version(exports.multi, tmp_path / "store", "multi", 1)
    (tmp_path / "models.config").write_text(MODELS)

    async def scenario(manager: ModelManager) -> None:
        assert manager.available() == {"image": 2, "multi": 1}
        assert manager.labels("image") == {"stable": 1, "canary": 2, "next": 3}
        assert manager.labels("multi") == {}
        with (
            manager.lease("image", label="stable") as stable,
            manager.lease("image", label="canary") as canary,
        ):
            assert (stable.version, canary.version) == (1, 2)
        with (
            pytest.raises(
                NotFound,
                match=r"model 'image' label 'next' points to version 3, which is not loaded; "
                r"available versions: \[2, 1\]",
            ),
            manager.lease("image", label="next"),
        ):
            pass
        with (
            pytest.raises(
                NotFound,
                match=r"model 'image' has no version label 'beta'; "
                r"labels: \{'canary': 2, 'next': 3, 'stable': 1\}",
            ),
            manager.lease("image", label="beta"),
        ):
            pass
        with pytest.raises(InvalidArgument, match="not both"), manager.lease("image", 1, label="stable"):
            pass

    run(ConfigFileSource(tmp_path / "models.config", reload_seconds=0), scenario)


def test_config_file_change_adds_and_removes_models_and_a_bad_one_changes_nothing(
    tmp_path: Path, exports: Exports
) -> None:
    copy_version(exports.image_v1, tmp_path, "image", 1)
    copy_version(exports.multi, tmp_path / "store", "multi", 1)
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "image" base_path: "image" } }')
    source = ConfigFileSource(config, reload_seconds=0)

    async def scenario(manager: ModelManager) -> None:
        assert manager.available() == {"image": 1}
        config.write_text('model_config_list { config { name: "multi" base_path: "store/multi" } }')
        source.reload()
        await settle(manager)
        await until(lambda: states(manager, "image") == {1: VersionState.END})
        assert manager.available() == {"multi": 1}
        config.write_text('model_config_list { config { name: "multi" base_path: "" } }')
        assert source.reload() is False
        await settle(manager)
        assert manager.available() == {"multi": 1}

    run(source, scenario)


class GatedLoader(CountingLoader):
    """The real loader, held back until the test opens the gate (a slow load)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def __call__(self, model: str, version: int, path: Path, **kwargs: Any) -> Servable:
        if version > 1:
            assert self.gate.wait(30), "gate never opened"
        return super().__call__(model, version, path, **kwargs)


def test_loads_run_in_the_background_while_the_current_version_serves(
    tmp_path: Path, exports: Exports
) -> None:
    copy_version(exports.image_v1, tmp_path, "image", 1)
    loader = GatedLoader()
    image = np.zeros((1, 28, 28), np.float32)

    async def scenario(manager: ModelManager) -> None:
        copy_version(exports.image_v2, tmp_path, "image", 2)
        copy_version(exports.image_v2, tmp_path, "image", 3)
        await manager.poll_once()  # returns at once: the loads are in the background
        # One load thread: version 3 loads (newest first), version 2 waits its turn in START.
        assert states(manager, "image") == {
            3: VersionState.LOADING,
            2: VersionState.START,
            1: VersionState.AVAILABLE,
        }
        with manager.lease("image") as current:
            assert current.version == 1 and current.batcher is not None
            out = await current.batcher.submit({"image": image}, 1)
            assert out["probabilities"].shape == (1, 10)
        loader.gate.set()
        await until(
            lambda: (
                states(manager, "image")
                == {3: VersionState.AVAILABLE, 2: VersionState.AVAILABLE, 1: VersionState.END}
            )
        )
        assert current.servable is None  # version 1 unloaded once version 3 could answer

    run(RepositorySource(tmp_path, policy=Latest(2)), scenario, loader, load_threads=1)


def image_estimate(exports: Exports) -> int:
    """The memory estimate of one image version with factor 1: the size of its files."""
    return scan(exports.image_v1)[1]


def test_load_over_the_memory_budget_waits_until_an_unload_frees_room(
    tmp_path: Path, exports: Exports
) -> None:
    copy_version(exports.image_v1, tmp_path, "a", 1)
    copy_version(exports.image_v1, tmp_path, "b", 1)
    budget = image_estimate(exports) * 3 // 2  # room for one version, not two

    async def scenario(manager: ModelManager) -> ModelManager:
        assert manager.available() == {"a": 1}
        waiting = manager.status("b")[0]
        assert (waiting.state, waiting.waiting_logged) == (VersionState.START, True)
        await settle(manager)
        assert states(manager, "b") == {1: VersionState.START}  # still waiting, not failed
        shutil.rmtree(tmp_path / "a")  # "a" is unloaded, which frees its reservation
        await settle(manager)
        await until(lambda: manager.available() == {"b": 1})
        assert states(manager, "a") == {1: VersionState.END}
        copy_version(exports.image_v1, tmp_path, "c", 1)
        await settle(manager)
        assert states(manager, "c") == {1: VersionState.START}
        return manager

    manager = run(tmp_path, scenario, memory=MemoryOptions(budget_bytes=budget, estimate_factor=1.0))
    # Stopping ends a load that was still waiting, without an error.
    assert [(v.state, v.error_code) for v in manager.status("c")] == [(VersionState.END, "")]


def test_version_that_can_never_fit_the_budget_ends_resource_exhausted(
    tmp_path: Path, exports: Exports
) -> None:
    copy_version(exports.image_v1, tmp_path, "image", 1)
    loader = CountingLoader()
    budget = image_estimate(exports)  # the files fit, their estimate at 1.2 x does not

    async def scenario(manager: ModelManager) -> None:
        (record,) = manager.status("image")
        assert (record.state, record.error_code) == (VersionState.END, "RESOURCE_EXHAUSTED")
        assert f"more than the whole memory budget of {budget} bytes" in record.error
        assert loader.attempts == []  # refused from its files, before TensorFlow is touched
        with pytest.raises(NotFound, match="RESOURCE_EXHAUSTED"), manager.lease("image"):
            pass

    run(tmp_path, scenario, loader, memory=MemoryOptions(budget_bytes=budget, estimate_factor=1.2))


def test_availability_listener_follows_the_models(tmp_path: Path, exports: Exports) -> None:
    copy_version(exports.image_v1, tmp_path, "image", 1)
    events: list[tuple[str, bool]] = []

    async def scenario(manager: ModelManager) -> None:
        assert events == [("image", False), ("image", True)]  # listed, then loaded
        copy_version(exports.image_v2, tmp_path, "image", 2)
        await settle(manager)
        assert events == [("image", False), ("image", True)]  # the switch never leaves it without a version
        shutil.rmtree(tmp_path / "image")
        await settle(manager)
        await until(lambda: events[2:] == [("image", False)])

    run(tmp_path, scenario, on_availability=lambda model, serving: events.append((model, serving)))
