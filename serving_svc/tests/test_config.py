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


def test_model_config_file_replaces_the_repository_flags(tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "m" base_path: "m" } }')
    settings = load_settings(
        ServingSettings,
        ["--model-config-file", str(config), "--memory-budget-bytes", "1000000", "--load-threads", "2"],
    )
    assert (settings.model_config_file, settings.model_repo) == (config, None)
    assert (settings.memory_budget_bytes, settings.memory_estimate_factor, settings.load_threads) == (
        1_000_000,
        1.2,
        2,
    )
    assert settings.model_config_poll_seconds == 1.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_config_list { config { name: ", "not a text-format tensorflow.serving.ModelServerConfig"),
        (
            'model_config_list { config { name: "m" base_path: "m" model_platform: "onnx" } }',
            "model 'm': model_platform 'onnx' is not supported; only 'tensorflow'",
        ),
    ],
)
def test_bad_model_config_file_exits_2_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    config = tmp_path / "models.config"
    config.write_text(text)
    with pytest.raises(SystemExit) as e:
        load_settings(ServingSettings, ["--model-config-file", str(config)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid setting model_config_file (--model-config-file / MLMESH_SERVING_MODEL_CONFIG_FILE)" in err
    assert f"model config file {config}" in err and message in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "give exactly one of --model-repo"),
        (["--model-repo", "r", "--model-config-file", "CONFIG"], "give exactly one of --model-repo"),
        (["--model-config-file", "CONFIG", "--model-names", "a"], "--model-names applies to --model-repo"),
        (["--model-config-file", "CONFIG", "--memory-estimate-factor", "0"], "memory_estimate_factor"),
    ],
)
def test_model_source_flags_are_checked_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    config = tmp_path / "models.config"
    config.write_text("")
    with pytest.raises(SystemExit) as e:
        load_settings(ServingSettings, [str(config) if f == "CONFIG" else f for f in flags])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
