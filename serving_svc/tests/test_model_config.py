"""The model config file: TF Serving's text-format ModelServerConfig, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving_svc.core.model_config import ModelConfigError, parse_model_config, read_model_config
from serving_svc.core.policy import All, Latest, Specific

pytestmark = pytest.mark.unit

FULL = """
model_config_list {
  config {
    name: "fashion"
    base_path: "/models/fashion"
    model_platform: "tensorflow"
    model_version_policy { latest { num_versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
  config { name: "every" base_path: "every" model_version_policy { all {} } }
  config {
    name: "pinned" base_path: "/m/pinned"
    model_version_policy { specific { versions: 3 versions: 5 } }
  }
}
"""


def test_every_honoured_field_is_read(tmp_path: Path) -> None:
    fashion, every, pinned = parse_model_config(FULL, tmp_path)
    assert (fashion.name, fashion.base_path, fashion.policy) == (
        "fashion",
        Path("/models/fashion"),
        Latest(2),
    )
    assert fashion.labels == {"stable": 1, "canary": 2}
    assert (every.policy, every.base_path) == (
        All(),
        tmp_path / "every",
    )  # relative: from the file's directory
    assert pinned.policy == Specific(frozenset({3, 5}))


def test_no_policy_means_latest_one_as_in_tf_serving(tmp_path: Path) -> None:
    (model,) = parse_model_config('model_config_list { config { name: "m" base_path: "/m" } }', tmp_path)
    assert model.policy == Latest(1) and model.labels == {}


def test_an_empty_list_serves_no_models(tmp_path: Path) -> None:
    assert parse_model_config("", tmp_path) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_config_list { config { name: ", "not a text-format tensorflow.serving.ModelServerConfig"),
        ('model_config_list { config { nmae: "m" } }', 'no field named "nmae"'),
        ('model_config_list { config { base_path: "/m" } }', "config[0]: name is empty"),
        ('model_config_list { config { name: "m" } }', "model 'm': base_path is empty"),
        (
            'model_config_list { config { name: "m" base_path: "/m" model_platform: "pytorch" } }',
            "model 'm': model_platform 'pytorch' is not supported; only 'tensorflow'",
        ),
        (
            'model_config_list { config { name: "m" base_path: "/a" } config { name: "m" base_path: "/b" } }',
            "model 'm' is listed twice",
        ),
        ('model_config_list { config { name: "../m" base_path: "/m" } }', "must be a plain name"),
        (
            'model_config_list { config { name: "m" base_path: "/m" version_labels { key: "x" value: 0 } } }',
            "label 'x' points to version 0",
        ),
        (
            'model_config_list { config { name: "m" base_path: "/m" '
            "model_version_policy { specific { } } } }",
            "specific lists no versions",
        ),
        ('custom_model_config { type_url: "x" }', "custom_model_config is not supported"),
    ],
)
def test_bad_config_is_refused_naming_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ModelConfigError, match="model config") as e:
        parse_model_config(text, tmp_path)
    assert message in str(e.value)


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=f"cannot read model config file {tmp_path / 'absent'}"):
        read_model_config(tmp_path / "absent")


@pytest.mark.parametrize(
    ("policy", "expected"),
    [(Latest(1), [9]), (Latest(2), [9, 4]), (All(), [9, 4, 1]), (Specific(frozenset({1, 7})), [1])],
)
def test_policies_select_among_versions_on_disk(policy: Latest | All | Specific, expected: list[int]) -> None:
    assert policy.select([1, 9, 4]) == expected
