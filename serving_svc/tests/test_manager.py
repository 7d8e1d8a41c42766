"""Version lifecycle: load beside, switch, drain, unload; failures keep the old version serving."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from mlmesh.errors import NotFound

from serving_svc.core.loader import Servable, load_servable
from serving_svc.core.manager import ModelManager, VersionState
from serving_svc.core.source import RepositorySource
from serving_svc.tests.conftest import Exports
from serving_svc.tests.helpers import copy_version

pytestmark = pytest.mark.unit
T = TypeVar("T")


class CountingLoader:
    """The real loader, counting how often each version is attempted."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, int]] = []

    def __call__(self, model: str, version: int, path: Path, *, warmup: bool = True) -> Servable:
        self.attempts.append((model, version))
        return load_servable(model, version, path, warmup=warmup)


def run(repo: Path, scenario: Callable[[ModelManager], Awaitable[T]], loader: Any = load_servable) -> T:
    async def main() -> T:
        manager = ModelManager(RepositorySource(repo), poll_seconds=3600, loader=loader)
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
        assert (status[2].state, status[2].error_code) == (VersionState.END, "UNKNOWN")
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
