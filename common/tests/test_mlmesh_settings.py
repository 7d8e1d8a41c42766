"""Settings: flags beat the environment, bad values stop the process naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlmesh.settings import ServiceSettings, load_settings
from pydantic import Field
from pydantic_settings import SettingsConfigDict

pytestmark = pytest.mark.unit


class DemoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MLMESH_TESTSVC_", extra="forbid")

    data_dir: Path = Field(Path("/tmp/x"), description="Where data lives.")
    workers: int = Field(2, ge=1, le=8, description="Worker count.")


def test_defaults_are_loopback_and_ephemeral(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings(DemoSettings, [])
    assert s.host == "127.0.0.1"
    assert s.port == 0
    assert s.port_file is None


def test_kebab_case_flags_are_parsed() -> None:
    s = load_settings(DemoSettings, ["--data-dir", "/d", "--port", "1234", "--log-format", "json"])
    assert s.data_dir == Path("/d")
    assert s.port == 1234
    assert s.log_format == "json"


def test_environment_is_read_with_the_prefix_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLMESH_TESTSVC_WORKERS", "5")
    assert load_settings(DemoSettings, []).workers == 5
    assert load_settings(DemoSettings, ["--workers", "3"]).workers == 3


def test_out_of_bounds_flag_exits_2_naming_flag_and_env(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        load_settings(DemoSettings, ["--workers", "9"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid setting workers (--workers / MLMESH_TESTSVC_WORKERS)" in err
    assert "less than or equal to 8" in err
    assert "'9'" in err


def test_bad_env_value_exits_2_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLMESH_TESTSVC_PORT", "http")
    with pytest.raises(SystemExit) as e:
        load_settings(DemoSettings, [])
    assert e.value.code == 2
    assert "invalid setting port (--port / MLMESH_TESTSVC_PORT)" in capsys.readouterr().err


def test_bad_choice_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        load_settings(DemoSettings, ["--log-format", "xml"])
    assert e.value.code == 2
    assert "log_format" in capsys.readouterr().err


def test_unknown_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        load_settings(DemoSettings, ["--no-such-flag", "1"])
    assert e.value.code == 2
    assert "--no-such-flag" in capsys.readouterr().err
