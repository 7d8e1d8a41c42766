"""The scale file and the Scaler that `mlmesh up` runs, on real child processes (the tiny service)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mlmesh.cli.scale import Scaler, read_wanted, running
from mlmesh.supervisor import ServiceSpec, Supervisor
from mlmesh_testutil import tiny_env

pytestmark = pytest.mark.unit


def tiny(name: str) -> ServiceSpec:
    return ServiceSpec(name, "mlmesh_tinysvc", ["--name", name, "--grace-seconds", "1"], "", 20.0)


def write(path: Path, wanted: object, bump: float) -> None:
    path.write_text(json.dumps(wanted))
    os.utime(path, (bump, bump))  # a new mtime even within the file system's timestamp granularity


def names(sup: Supervisor) -> list[str]:
    return [c.name for c in sup.children()]


def test_scaler_starts_the_missing_and_removes_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "scale.json"
    with Supervisor(tmp_path / "run", env=tiny_env(), grace_seconds=5) as sup:
        sup.start(tiny("worker-0"))
        scaler = Scaler(sup, {"workers": lambda i: tiny(f"worker-{i}")}, path)
        assert scaler.poll() == []  # no file: nothing to do

        write(path, {"workers": 3}, 1000)
        assert scaler.poll() == ["started worker-1", "started worker-2"]
        assert names(sup) == ["worker-0", "worker-1", "worker-2"]
        assert scaler.poll() == []  # unchanged file: not re-read

        write(path, {"workers": 1}, 2000)
        assert scaler.poll() == ["removed worker-2", "removed worker-1"]
        assert names(sup) == ["worker-0"]

        write(path, {"workers": 2}, 3000)
        assert scaler.poll() == ["started worker-1"]  # the lowest free index again

        write(path, {"serving": 1}, 4000)
        assert scaler.poll() == ["cannot scale serving: this suite does not run it"]
        assert names(sup) == ["worker-0", "worker-1"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1]", "expected a JSON object"),
        ('{"ingest": 2}', "unknown kind 'ingest'"),
        ('{"serving": -1}', "serving is -1; expected an integer 0..64"),
        ('{"serving": true}', "serving is True"),
        ('{"serving": 2.5}', "serving is 2.5"),
        ("{", "scale file"),
    ],
)
def test_bad_scale_files_are_refused_naming_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "scale.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="scale file") as e:
        read_wanted(path)
    assert message in str(e.value)


def test_running_counts_only_running_children_of_the_kind() -> None:
    suite = {
        "services": [
            {"name": "serving-0", "state": "running"},
            {"name": "serving-1", "state": "backoff"},
            {"name": "serving-gateway", "state": "running"},
            {"name": "worker-0", "state": "running"},
        ]
    }
    assert running(suite, "serving") == ["serving-0"]
    assert running(suite, "workers") == ["worker-0"]
