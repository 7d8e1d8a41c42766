"""IngestSettings: flags, environment, bounds."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlmesh.settings import load_settings

from ingest_svc.config import IngestSettings

pytestmark = pytest.mark.unit


def test_flags_are_kebab_case(tmp_path: Path) -> None:
    s = load_settings(IngestSettings, ["--data-dir", str(tmp_path), "--default-lease-seconds", "5"])
    assert s.data_dir == tmp_path and s.default_lease_seconds == 5.0
    assert s.default_max_partition_bytes == 8 * 1024 * 1024 and s.max_lease_seconds == 3600.0


def test_environment_uses_the_ingest_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLMESH_INGEST_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MLMESH_INGEST_DEFAULT_MAX_PARTITION_BYTES", "65536")
    s = load_settings(IngestSettings, [])
    assert s.data_dir == tmp_path and s.default_max_partition_bytes == 65536


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--default-max-partition-bytes", "100"], "default_max_partition_bytes"),
        (["--default-max-partition-bytes", str(2 * 1024**3)], "default_max_partition_bytes"),
        (["--default-lease-seconds", "0"], "default_lease_seconds"),
        (["--max-lease-seconds", "10", "--default-lease-seconds", "20"], "exceeds max_lease_seconds"),
        (["--lease-sweep-seconds", "-1"], "lease_sweep_seconds"),
    ],
)
def test_bad_values_exit_2_naming_the_setting(argv, names, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        load_settings(IngestSettings, argv)
    assert info.value.code == 2
    assert names in capsys.readouterr().err


def test_unknown_flag_exits() -> None:
    with pytest.raises(SystemExit) as info:
        load_settings(IngestSettings, ["--no-such-flag", "1"])
    assert info.value.code == 2
