"""The source: which model versions should be loaded.

Like TensorFlow Serving's file-system source, each poll emits, for every
model, the *full* set of aspired versions (not deltas): the version
directories `<base_path>/<N>/` (N a positive integer in canonical form) that
hold `saved_model.pb`, narrowed by the model's version policy. Exports are
renamed into place atomically, so hidden `.tmp-*` directories, non-numeric
names and version directories without `saved_model.pb` are partial or
foreign and are skipped.

Two ways to say which models exist: `RepositorySource` serves every
directory of one repository (or the named ones) with `latest{1}`;
`ConfigFileSource` serves what a TF Serving model-config file lists.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from serving_svc.core.model_config import ModelConfig, ModelConfigFile
from serving_svc.core.policy import Latest

SAVED_MODEL_FILE = "saved_model.pb"


class SourceError(Exception):
    """The repository could not be read this time; the caller keeps its current state."""


@dataclass(frozen=True)
class AspiredVersion:
    """One version the source wants loaded.

    `fingerprint` changes when any file under the version directory changes
    (name, size or mtime), so a version that failed to load is retried only
    once its files differ. `disk_bytes` is the size of its files, which the
    manager's memory estimate starts from.
    """

    model: str
    version: int
    path: Path
    fingerprint: str
    disk_bytes: int = 0


@dataclass(frozen=True)
class ModelAspiration:
    """A model's config and the versions it aspires to now (newest first; may be empty)."""

    config: ModelConfig
    versions: tuple[AspiredVersion, ...]

    @property
    def name(self) -> str:
        return self.config.name


def parse_version(name: str) -> int | None:
    """The version number of a directory name, or None if it is not a version directory."""
    if not name.isascii() or not name.isdigit():
        return None
    version = int(name)
    # "007" and "7" would name the same version; only the canonical spelling counts.
    if version <= 0 or str(version) != name:
        return None
    return version


def scan(path: Path) -> tuple[str, int]:
    """(fingerprint, total bytes) of the files under `path`: a digest of every
    file's relative path, size and mtime, in one walk."""
    digest = hashlib.sha256()
    total = 0
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except FileNotFoundError:
                continue
            total += st.st_size
            rel = os.path.relpath(full, path)
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16], total


def fingerprint(path: Path) -> str:
    """A digest of every file's relative path, size and mtime under `path`."""
    return scan(path)[0]


def complete_versions(base_path: Path) -> dict[int, Path]:
    """Version number → directory for every complete version under `base_path`
    (empty when it does not exist). Raises SourceError when it cannot be listed."""
    try:
        entries = list(os.scandir(base_path))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as e:
        raise SourceError(f"cannot list model directory {base_path}: {e}") from e
    found: dict[int, Path] = {}
    for entry in entries:
        version = parse_version(entry.name)
        if version is None or not entry.is_dir():
            continue
        path = Path(entry.path)
        if (path / SAVED_MODEL_FILE).is_file():
            found[version] = path
    return found


def aspire(config: ModelConfig) -> ModelAspiration:
    """The versions `config`'s policy selects among those complete on disk."""
    found = complete_versions(config.base_path)
    versions = []
    for version in config.policy.select(found):
        digest, size = scan(found[version])
        versions.append(AspiredVersion(config.name, version, found[version], digest, size))
    return ModelAspiration(config, tuple(versions))


class RepositorySource:
    """Every model directory of one repository (or the named ones), each with `latest{1}`.

    Stateless between polls, so thread-safe; `poll` does blocking file I/O
    and belongs in an executor."""

    def __init__(self, repo: Path, model_names: Sequence[str] = ()) -> None:
        self.repo = repo
        self.model_names = list(model_names)

    def poll(self) -> dict[str, ModelAspiration]:
        """Every model the source serves with its aspired versions (none yet is
        an empty tuple). Raises SourceError when a directory exists but cannot be listed."""
        names = self.model_names or self._discover_models()
        return {name: aspire(ModelConfig(name, self.repo / name, Latest(1))) for name in names}

    def _discover_models(self) -> list[str]:
        try:
            entries = list(os.scandir(self.repo))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise SourceError(f"cannot list model repository {self.repo}: {e}") from e
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


class ConfigFileSource:
    """The models a TF Serving model-config file lists, each under its own base_path.

    The file is read at construction (ConfigError if bad: the server must not
    start) and re-read at most every `config_poll_seconds` (0: never) when it
    changed; a bad change keeps the last good config. Not thread-safe: one
    poll at a time (the manager's poll loop)."""

    def __init__(self, path: Path, config_poll_seconds: float = 1.0) -> None:
        self.file = ModelConfigFile(path)
        self._interval = config_poll_seconds
        self._next_check = time.monotonic() + config_poll_seconds

    def poll(self) -> dict[str, ModelAspiration]:
        now = time.monotonic()
        if self._interval > 0 and now >= self._next_check:
            self._next_check = now + self._interval
            self.file.refresh()
        return {c.name: aspire(c) for c in self.file.configs}
