"""Settings: flags and env, bounds, the model-name list."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlmesh.settings import load_settings

from serving_svc.config import ServingSettings

pytestmark = pytest.mark.unit


def test_flags_are_parsed_with_defaults(tmp_path: Path) -> None:
    settings = load_settings(ServingSettings, ["--model-repo", str(tmp_path), "--model-names", " a, b ,"])
    assert settings.model_repo == tmp_path
    assert settings.model_name_list == ["a", "b"]
    assert (settings.poll_seconds, settings.max_batch_size, settings.max_batch_wait_ms) == (1.0, 32, 2.0)
    assert settings.warmup is True


def test_environment_is_read_with_the_serving_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLMESH_SERVING_MODEL_REPO", str(tmp_path))
    monkeypatch.setenv("MLMESH_SERVING_WARMUP", "false")
    settings = load_settings(ServingSettings, [])
    assert settings.model_repo == tmp_path and settings.warmup is False
    assert settings.model_name_list == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-batch-size", "0"], "invalid setting max_batch_size (--max-batch-size"),
        (["--poll-seconds", "0"], "invalid setting poll_seconds"),
        (["--max-batch-wait-ms", "-1"], "invalid setting max_batch_wait_ms"),
        (["--model-names", "a,.tmp"], "model name '.tmp' must be a plain directory name"),
        (["--model-names", "a,a"], "contain duplicates"),
    ],
)
def test_bad_values_exit_2_naming_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as e:
        load_settings(ServingSettings, ["--model-repo", str(tmp_path), *flags])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
