"""Warm-up before AVAILABLE: TF Serving's warm-up requests when the version has them, else a zero batch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from serving_svc.core import tfs
from serving_svc.core.loader import LoadError, load_servable
from serving_svc.core.manager import ModelManager
from serving_svc.core.source import RepositorySource
from serving_svc.core.warmup import warm_up
from serving_svc.tests.conftest import Exports
from serving_svc.tests.helpers import copy_version
from serving_svc.tests.tfs_models import export_half_plus_three, predict_log, regress_log, write_warmup

pytestmark = pytest.mark.unit

REGRESS = "tensorflow/serving/regress"


@pytest.fixture(scope="module")
def half(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_half_plus_three(tmp_path_factory.mktemp("repo"), "half", 1)


def with_warmup(half: Path, tmp_path: Path, logs: list) -> Path:  # type: ignore[type-arg]
    version = copy_version(half, tmp_path, "half", 1)
    write_warmup(version, logs)
    return version


def test_every_warmup_request_is_replayed_predict_and_regress(half: Path, tmp_path: Path) -> None:
    logs = [
        predict_log("half", {"x": np.array([1.0, 2.0], np.float32)}),
        predict_log("half", {"x": np.array([5.0], np.float32)}, signature="serving_default"),
        regress_log("half", [1.0, 2.0], REGRESS),
    ]
    servable = load_servable("half", 1, with_warmup(half, tmp_path, logs), warmup=False)
    assert warm_up(servable) == 3


def test_without_a_warmup_file_a_zero_batch_is_the_warmup(exports: Exports) -> None:
    servable = load_servable("image", 1, exports.image_v1, warmup=False)
    assert warm_up(servable) == 0


def test_a_warmup_request_the_signature_rejects_fails_the_load_naming_it(half: Path, tmp_path: Path) -> None:
    logs = [
        predict_log("half", {"x": np.array([1.0], np.float32)}),
        predict_log("half", {"z": np.array([1.0], np.float32)}),
    ]
    path = with_warmup(half, tmp_path, logs)
    with pytest.raises(
        LoadError, match=r"warm-up request 1 of .*tf_serving_warmup_requests failed: inputs \['z'\]"
    ):
        load_servable("half", 1, path)


def test_a_warmup_request_for_an_unknown_signature_fails_the_load(half: Path, tmp_path: Path) -> None:
    path = with_warmup(half, tmp_path, [regress_log("half", [1.0], "no-such-signature")])
    with pytest.raises(
        LoadError, match=r'warm-up request 0 .* failed: Serving signature key "no-such-signature"'
    ):
        load_servable("half", 1, path)


def test_a_corrupt_warmup_file_fails_the_load(half: Path, tmp_path: Path) -> None:
    version = copy_version(half, tmp_path, "half", 1)
    (version / "assets.extra").mkdir()
    (version / "assets.extra" / "tf_serving_warmup_requests").write_bytes(b"\x01\x02not a tfrecord file")
    with pytest.raises(LoadError, match="cannot read warm-up requests"):
        load_servable("half", 1, version)


def test_a_version_whose_warmup_fails_never_serves_and_the_previous_one_keeps_serving(
    half: Path, tmp_path: Path
) -> None:
    copy_version(half, tmp_path, "half", 1)

    async def scenario() -> tuple[dict[int, tuple[str, str]], int]:
        manager = ModelManager(RepositorySource(tmp_path), poll_seconds=3600)
        await manager.start()
        try:
            broken = copy_version(half, tmp_path / ".staging", "half", 2)
            write_warmup(
                broken, [predict_log("half", {"x": np.array([[1.0]], np.float32)})]
            )  # rank 2, not [?]
            broken.rename(tmp_path / "half" / "2")  # appears complete, as an export does
            await manager.poll_once(wait_for_loads=True)
            statuses = {s.version: (s.state, s.error_code) for s in tfs.version_statuses(manager, "half")}
            [error] = [s.error_message for s in tfs.version_statuses(manager, "half", 2)]
            assert "warm-up request 0" in error and "input 'x' has shape [1,1]" in error, error
            with manager.lease("half") as record:
                return statuses, record.version
        finally:
            await manager.stop()

    statuses, serving = asyncio.run(scenario())
    assert statuses[2] == ("END", "UNKNOWN")
    assert serving == 1
