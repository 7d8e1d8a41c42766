"""The source: which model versions each model wants loaded.

Like TensorFlow Serving's file-system source, each poll emits the *full* set
of aspired versions per model (not deltas): the version directories
`<base_path>/<N>/` (N a positive integer in canonical form) that hold
`saved_model.pb`, filtered by the model's version policy. Exports are renamed
into place atomically, so hidden `.tmp-*` directories, non-numeric names and
version directories without `saved_model.pb` are partial or foreign and are
skipped.

Two sources share that scan: `RepositorySource` serves `<repo>/<model>/`
(every model directory, or the named ones) with latest{1};
`ConfigFileSource` serves the models of a ModelServerConfig file, re-read
when it changes.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mlmesh.files import atomic_write_bytes
from mlmesh.logging import get_logger

from serving_svc.core.model_config import (
    ModelConfig,
    ModelConfigError,
    parse_model_config,
    read_model_config,
)
from serving_svc.core.policy import Latest, VersionPolicy

log = get_logger(__name__)

SAVED_MODEL_FILE = "saved_model.pb"


class SourceError(Exception):
    """The repository could not be read this time; the caller keeps its current state."""


@dataclass(frozen=True)
class AspiredVersion:
    """One version the source wants loaded.

    `fingerprint` changes when any file under the version directory changes
    (name, size or mtime), so a version that failed to load is retried only
    once its files differ. `disk_bytes` is the total size of those files
    (what the memory estimate is made from).
    """

    model: str
    version: int
    path: Path
    fingerprint: str
    disk_bytes: int = 0


@dataclass(frozen=True)
class AspiredModel:
    """A model's full aspired state: its versions (newest first) and version labels."""

    name: str
    versions: tuple[AspiredVersion, ...] = ()
    labels: Mapping[str, int] = field(default_factory=dict)


class Source(Protocol):
    def poll(self) -> dict[str, AspiredModel]:
        """Every model served, with what it aspires now. Blocking file I/O."""
        ...


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
    """A digest of every file's relative path, size and mtime under `path`, and their total size."""
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
            rel = os.path.relpath(full, path)
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            total += st.st_size
    return digest.hexdigest()[:16], total


def fingerprint(path: Path) -> str:
    return scan(path)[0]


def aspired_versions(name: str, base_path: Path, policy: VersionPolicy) -> tuple[AspiredVersion, ...]:
    """The complete versions under `base_path` that `policy` selects, newest first.
    A missing base path has none; an unreadable one raises SourceError."""
    try:
        entries = list(os.scandir(base_path))
    except (FileNotFoundError, NotADirectoryError):
        return ()
    except OSError as e:
        raise SourceError(f"cannot list model directory {base_path}: {e}") from e
    complete = {
        v: Path(e.path)
        for e in entries
        if (v := parse_version(e.name)) is not None
        and e.is_dir()
        and (Path(e.path) / SAVED_MODEL_FILE).is_file()
    }
    out = []
    for version in policy.select(complete):
        digest, size = scan(complete[version])
        out.append(AspiredVersion(name, version, complete[version], digest, size))
    return tuple(out)


class RepositorySource:
    """Polls a model repository `<repo>/<model>/<version>/`, one policy for every model.
    Stateless between polls, so thread-safe."""

    def __init__(
        self, repo: Path, model_names: Sequence[str] = (), policy: VersionPolicy | None = None
    ) -> None:
        self.repo = repo
        self.model_names = list(model_names)
        self.policy = policy or Latest(1)

    def poll(self) -> dict[str, AspiredModel]:
        """Raises SourceError when a directory exists but cannot be listed."""
        names = self.model_names or self._discover_models()
        return {
            name: AspiredModel(name, aspired_versions(name, self.repo / name, self.policy)) for name in names
        }

    def _discover_models(self) -> list[str]:
        try:
            entries = list(os.scandir(self.repo))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise SourceError(f"cannot list model repository {self.repo}: {e}") from e
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


class ConfigFileSource:
    """Serves the models of a model config file, each from its own base_path.

    The file is read at construction (a bad file raises ModelConfigError) and
    re-read at most every `reload_seconds` (0: never) when its contents
    changed; a bad new file is logged once and the last good config keeps
    serving. Not thread-safe: one poll at a time (the manager's poll loop).
    """

    def __init__(self, path: Path, reload_seconds: float = 1.0) -> None:
        self.path = path
        self.reload_seconds = reload_seconds
        self._text = self._read_text()
        self.models = read_model_config(path)
        self._checked = time.monotonic()
        self._rejected = ""  # the text of the last bad file, so it is logged once

    def _read_text(self) -> str:
        try:
            return self.path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ModelConfigError(f"cannot read model config file {self.path}: {e}") from e

    def reload(self) -> bool:
        """Re-read the file now; True if a new good config was taken."""
        self._checked = time.monotonic()
        try:
            text = self._read_text()
        except ModelConfigError as e:
            if self._rejected != str(e):
                log.error("model config file unreadable; keeping the last good config", error=str(e))
                self._rejected = str(e)
            return False
        if text == self._text or text == self._rejected:
            return False
        try:
            models = read_model_config(self.path)
        except ModelConfigError as e:
            log.error("model config file rejected; keeping the last good config", error=str(e))
            self._rejected = text
            return False
        self._text, self.models, self._rejected = text, models, ""
        log.info("model config file reloaded", path=str(self.path), models=[m.name for m in models])
        return True

    def replace(self, text: str, origin: str) -> list[ModelConfig]:
        """Take a new config (TF Serving's HandleReloadConfigRequest): validated first
        (ModelConfigError names the problem, nothing changes), then written over the file
        atomically, so it outlives a restart and every replica watching the file follows."""
        models = parse_model_config(text, self.path.parent, origin=origin)
        atomic_write_bytes(self.path, text.encode())
        self._text, self.models, self._rejected = text, models, ""
        self._checked = time.monotonic()
        log.info("model config replaced", path=str(self.path), models=[m.name for m in models], origin=origin)
        return models

    def poll(self) -> dict[str, AspiredModel]:
        if self.reload_seconds and time.monotonic() - self._checked >= self.reload_seconds:
            self.reload()
        return {m.name: model_aspiration(m) for m in self.models}


def model_aspiration(model: ModelConfig) -> AspiredModel:
    return AspiredModel(model.name, aspired_versions(model.name, model.base_path, model.policy), model.labels)
