"""mlmesh.files: atomic small-file writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlmesh.files import atomic_write_bytes, atomic_write_json

pytestmark = pytest.mark.unit


def test_atomic_write_replaces_whole_file_and_creates_the_directory(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "x.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"b": 2})
    assert json.loads(target.read_text()) == {"b": 2}
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]  # no temp file left behind


def test_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]
