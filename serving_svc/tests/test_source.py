"""The source emits, per model, the newest complete version and nothing partial."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving_svc.core.source import RepositorySource, SourceError, fingerprint, parse_version

pytestmark = pytest.mark.unit


def make_version(repo: Path, model: str, name: str, complete: bool = True) -> Path:
    path = repo / model / name
    (path / "variables").mkdir(parents=True)
    if complete:
        (path / "saved_model.pb").write_bytes(b"graph")
    return path


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("1", 1),
        ("12", 12),
        ("0", None),
        ("007", None),
        ("-1", None),
        ("v1", None),
        (".tmp-3", None),
        ("\u0661", None),
    ],
)
def test_parse_version_accepts_only_canonical_positive_integers(name: str, expected: int | None) -> None:
    assert parse_version(name) == expected


def test_newest_complete_version_is_aspired(tmp_path: Path) -> None:
    make_version(tmp_path, "m", "1")
    make_version(tmp_path, "m", "3")
    make_version(tmp_path, "m", "10")
    aspired = RepositorySource(tmp_path).poll()
    assert aspired["m"] is not None
    assert (aspired["m"].version, aspired["m"].path) == (10, tmp_path / "m" / "10")


def test_partial_and_foreign_directories_are_ignored(tmp_path: Path) -> None:
    make_version(tmp_path, "m", "2")
    make_version(tmp_path, "m", "9", complete=False)  # an export without saved_model.pb
    make_version(tmp_path, "m", ".tmp-abc")  # an export still being written
    make_version(tmp_path, "m", "latest")
    make_version(tmp_path, "m", "0")
    (tmp_path / "m" / "11").write_text("a file, not a directory")
    aspired = RepositorySource(tmp_path).poll()["m"]
    assert aspired is not None and aspired.version == 2


def test_all_model_directories_are_discovered_when_no_names_are_given(tmp_path: Path) -> None:
    make_version(tmp_path, "b", "1")
    make_version(tmp_path, "a", "1")
    (tmp_path / "empty").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "README").write_text("not a model")
    aspired = RepositorySource(tmp_path).poll()
    assert sorted(aspired) == ["a", "b", "empty"]
    assert aspired["empty"] is None


def test_named_models_only_and_missing_ones_have_no_version(tmp_path: Path) -> None:
    make_version(tmp_path, "a", "1")
    make_version(tmp_path, "b", "1")
    aspired = RepositorySource(tmp_path, ["a", "later"]).poll()
    assert sorted(aspired) == ["a", "later"]
    assert aspired["later"] is None


def test_missing_repository_is_empty_not_an_error(tmp_path: Path) -> None:
    assert RepositorySource(tmp_path / "not-yet").poll() == {}


def test_unreadable_model_directory_raises_source_error(tmp_path: Path) -> None:
    (tmp_path / "m").symlink_to(tmp_path / "m")  # ELOOP: unreadable even for root
    with pytest.raises(SourceError, match="cannot list model directory"):
        RepositorySource(tmp_path, ["m"]).poll()


def test_fingerprint_changes_when_a_file_changes(tmp_path: Path) -> None:
    path = make_version(tmp_path, "m", "1")
    before = fingerprint(path)
    assert fingerprint(path) == before
    (path / "variables" / "variables.index").write_bytes(b"x")
    assert fingerprint(path) != before
