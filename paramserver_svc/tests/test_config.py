"""Settings: flags, MLMESH_PS_ environment, defaults and fail-fast messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlmesh.settings import load_settings

from paramserver_svc.config import ParamServerSettings

pytestmark = pytest.mark.unit


def test_flags_are_kebab_case_and_checkpoint_dir_defaults_per_shard() -> None:
    s = load_settings(ParamServerSettings, ["--shard-index", "1", "--num-shards", "3"])
    assert (s.shard_index, s.num_shards) == (1, 3)
    assert s.checkpoint_dir == Path(".mlmesh/ps/shard-1")
    assert s.checkpoint_every_seconds == 0


def test_environment_uses_the_mlmesh_ps_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLMESH_PS_SHARD_INDEX", "0")
    monkeypatch.setenv("MLMESH_PS_NUM_SHARDS", "2")
    monkeypatch.setenv("MLMESH_PS_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.setenv("MLMESH_PS_CHECKPOINT_EVERY_SECONDS", "2.5")
    s = load_settings(ParamServerSettings, [])
    assert (s.num_shards, s.checkpoint_dir, s.checkpoint_every_seconds) == (2, tmp_path, 2.5)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--shard-index", "2", "--num-shards", "2"], "shard_index 2 must be below num_shards 2"),
        (["--shard-index", "-1", "--num-shards", "2"], "--shard-index"),
        (["--shard-index", "0", "--num-shards", "0"], "--num-shards"),
        (["--num-shards", "2"], "MLMESH_PS_SHARD_INDEX"),
        (
            ["--shard-index", "0", "--num-shards", "1", "--checkpoint-every-seconds", "-1"],
            "checkpoint_every_seconds",
        ),
    ],
)
def test_bad_settings_exit_2_naming_the_setting(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as info:
        load_settings(ParamServerSettings, argv)
    assert info.value.code == 2
    assert needle in capsys.readouterr().err
