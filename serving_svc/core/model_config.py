"""The model config file: TensorFlow Serving's own `ModelServerConfig`, text format.

    model_config_list {
      config {
        name: "fashion"
        base_path: "/models/fashion"          # relative paths: from the file's directory
        model_platform: "tensorflow"          # the only platform; empty means it too
        model_version_policy { latest { num_versions: 2 } }   # or all {} | specific { versions: 3 }
        version_labels { key: "stable" value: 2 }
        version_labels { key: "canary" value: 3 }
      }
    }

Parsed with the protos of the PyPI package `tensorflow-serving-api`, so any
file TF Serving accepts for these fields is accepted here, and a file with a
field it does not know fails the same way. `custom_model_config`,
`model_type` and `logging_config` are not supported and are refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving_svc.core.policy import All, Latest, Specific, VersionPolicy

PLATFORM = "tensorflow"


class ModelConfigError(ValueError):
    """The file cannot be used; the message names the file, the model and the field."""


@dataclass(frozen=True)
class ModelConfig:
    """One served model: where its versions live, which it wants, and its labels."""

    name: str
    base_path: Path
    policy: VersionPolicy = field(default_factory=Latest)
    labels: Mapping[str, int] = field(default_factory=dict)


def parse_model_config(text: str, base_dir: Path, origin: str = "model config") -> list[ModelConfig]:
    """The models of a text-format ModelServerConfig; raises ModelConfigError naming the problem."""
    try:
        proto = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as e:
        raise ModelConfigError(
            f"{origin}: not a text-format tensorflow.serving.ModelServerConfig: {e}"
        ) from e
    if proto.HasField("custom_model_config"):
        raise ModelConfigError(f"{origin}: custom_model_config is not supported; use model_config_list")
    models: list[ModelConfig] = []
    seen: set[str] = set()
    for i, config in enumerate(proto.model_config_list.config):
        where = f"{origin}: model_config_list.config[{i}]"
        name = config.name
        if not name:
            raise ModelConfigError(f"{where}: name is empty")
        where = f"{origin}: model {name!r}"
        if name.startswith(".") or "/" in name or "\\" in name:
            raise ModelConfigError(f"{where}: the name must be a plain name (no '/', not hidden)")
        if name in seen:
            raise ModelConfigError(f"{where} is listed twice")
        seen.add(name)
        if not config.base_path:
            raise ModelConfigError(f"{where}: base_path is empty")
        platform = config.model_platform or PLATFORM
        if platform != PLATFORM:
            raise ModelConfigError(
                f"{where}: model_platform {config.model_platform!r} is not supported; only {PLATFORM!r}"
            )
        if config.model_type:
            raise ModelConfigError(f"{where}: model_type is deprecated and not supported; use model_platform")
        if config.HasField("logging_config"):
            raise ModelConfigError(f"{where}: logging_config is not supported")
        labels = dict(sorted(config.version_labels.items()))
        for label, version in labels.items():
            if not label:
                raise ModelConfigError(f"{where}: a version label has an empty name")
            if version <= 0:
                raise ModelConfigError(f"{where}: label {label!r} points to version {version}; expected > 0")
        models.append(ModelConfig(name, base_dir / config.base_path, _policy(config, where), labels))
    return models


def _policy(config: model_server_config_pb2.ModelConfig, where: str) -> VersionPolicy:
    if not config.HasField("model_version_policy"):
        return Latest(1)
    policy = config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return All()
    if choice == "specific":
        if not policy.specific.versions:
            raise ModelConfigError(f"{where}: model_version_policy specific lists no versions")
        bad = [v for v in policy.specific.versions if v <= 0]
        if bad:
            raise ModelConfigError(f"{where}: model_version_policy specific has versions {bad}; expected > 0")
        return Specific(frozenset(policy.specific.versions))
    if choice == "latest":
        # As in TF Serving, num_versions 0 (unset) means 1.
        n = policy.latest.num_versions or 1
        if n < 0:
            raise ModelConfigError(f"{where}: latest num_versions is {n}; expected >= 1")
        return Latest(n)
    return Latest(1)


def read_model_config(path: Path) -> list[ModelConfig]:
    """Read and parse the file; raises ModelConfigError (also for an unreadable file)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ModelConfigError(f"cannot read model config file {path}: {e}") from e
    return parse_model_config(text, path.parent, origin=f"model config file {path}")
