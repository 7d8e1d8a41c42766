"""The source emits, per model, the full set of complete versions its policy wants, and nothing partial."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serving_svc.core.policy import All, Latest, Specific
from serving_svc.core.source import (
    ConfigFileSource,
    RepositorySource,
    SourceError,
    fingerprint,
    parse_version,
    scan,
)

pytestmark = pytest.mark.unit


def make_version(repo: Path, model: str, name: str, complete: bool = True) -> Path:
    path = repo / model / name
    (path / "variables").mkdir(parents=True)
    if complete:
        (path / "saved_model.pb").write_bytes(b"graph")
    return path


def versions(source: RepositorySource | ConfigFileSource, model: str) -> list[int]:
    return [v.version for v in source.poll()[model].versions]


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


def test_newest_complete_version_is_aspired_by_default(tmp_path: Path) -> None:
    for name in ("1", "3", "10"):
        make_version(tmp_path, "m", name)
    (aspired,) = RepositorySource(tmp_path).poll()["m"].versions
    assert (aspired.version, aspired.path) == (10, tmp_path / "m" / "10")


@pytest.mark.parametrize(
    ("policy", "expected"),
    [(Latest(2), [10, 3]), (All(), [10, 3, 1]), (Specific(frozenset({1, 3, 99})), [3, 1])],
)
def test_policy_selects_the_full_set_newest_first(
    tmp_path: Path, policy: Latest | All | Specific, expected: list[int]
) -> None:
    for name in ("1", "3", "10"):
        make_version(tmp_path, "m", name)
    make_version(tmp_path, "m", "11", complete=False)  # never counts, even for latest{n}
    assert versions(RepositorySource(tmp_path, policy=policy), "m") == expected


def test_partial_and_foreign_directories_are_ignored(tmp_path: Path) -> None:
    make_version(tmp_path, "m", "2")
    make_version(tmp_path, "m", "9", complete=False)  # an export without saved_model.pb
    make_version(tmp_path, "m", ".tmp-abc")  # an export still being written
    make_version(tmp_path, "m", "latest")
    make_version(tmp_path, "m", "0")
    (tmp_path / "m" / "11").write_text("a file, not a directory")
    assert versions(RepositorySource(tmp_path, policy=All()), "m") == [2]


def test_all_model_directories_are_discovered_when_no_names_are_given(tmp_path: Path) -> None:
    make_version(tmp_path, "b", "1")
    make_version(tmp_path, "a", "1")
    (tmp_path / "empty").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "README").write_text("not a model")
    aspired = RepositorySource(tmp_path).poll()
    assert sorted(aspired) == ["a", "b", "empty"]
    assert aspired["empty"].versions == ()


def test_named_models_only_and_missing_ones_have_no_version(tmp_path: Path) -> None:
    make_version(tmp_path, "a", "1")
    make_version(tmp_path, "b", "1")
    aspired = RepositorySource(tmp_path, ["a", "later"]).poll()
    assert sorted(aspired) == ["a", "later"]
    assert aspired["later"].versions == ()


def test_missing_repository_is_empty_not_an_error(tmp_path: Path) -> None:
    assert RepositorySource(tmp_path / "not-yet").poll() == {}


def test_unreadable_model_directory_raises_source_error(tmp_path: Path) -> None:
    (tmp_path / "m").symlink_to(tmp_path / "m")  # ELOOP: unreadable even for root
    with pytest.raises(SourceError, match="cannot list model directory"):
        RepositorySource(tmp_path, ["m"]).poll()


def test_fingerprint_changes_when_a_file_changes_and_size_counts_every_file(tmp_path: Path) -> None:
    path = make_version(tmp_path, "m", "1")
    before = fingerprint(path)
    assert fingerprint(path) == before
    (path / "variables" / "variables.index").write_bytes(b"x" * 100)
    assert fingerprint(path) != before
    assert scan(path)[1] == len(b"graph") + 100


def write_config(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_config_file_serves_each_model_from_its_base_path_with_labels(tmp_path: Path) -> None:
    make_version(tmp_path / "store", "x", "1")
    make_version(tmp_path / "store", "x", "2")
    make_version(tmp_path / "elsewhere", "y", "5")
    config = tmp_path / "models.config"
    write_config(
        config,
        'model_config_list { config { name: "a" base_path: "store/x" model_version_policy { all {} } '
        'version_labels { key: "stable" value: 1 } } '
        f'config {{ name: "b" base_path: "{tmp_path / "elsewhere" / "y"}" }} }}',
    )
    aspired = ConfigFileSource(config, reload_seconds=0).poll()
    assert [v.version for v in aspired["a"].versions] == [2, 1]
    assert aspired["a"].labels == {"stable": 1}
    assert [(v.version, v.path) for v in aspired["b"].versions] == [(5, tmp_path / "elsewhere" / "y" / "5")]


def test_changed_config_file_is_taken_and_a_bad_one_keeps_the_last_good(tmp_path: Path) -> None:
    make_version(tmp_path, "m", "1")
    make_version(tmp_path, "m", "2")
    config = tmp_path / "models.config"
    write_config(config, 'model_config_list { config { name: "m" base_path: "m" } }')
    source = ConfigFileSource(config, reload_seconds=3600)
    assert versions(source, "m") == [2]
    write_config(
        config,
        'model_config_list { config { name: "m" base_path: "m" '
        "model_version_policy { specific { versions: 1 } } } }",
    )
    assert source.reload() is True
    assert versions(source, "m") == [1]
    write_config(config, 'model_config_list { config { name: "m" model_platform: "onnx" } }')
    assert source.reload() is False
    assert versions(source, "m") == [1]  # the last good config
    config.unlink()
    assert source.reload() is False
    assert versions(source, "m") == [1]
