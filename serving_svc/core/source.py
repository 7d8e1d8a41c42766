"""The source: which model versions the repository wants loaded.

Like TensorFlow Serving's file-system source, each poll emits the *full* set
of aspired versions (not deltas): for every model, the newest version
directory `<repo>/<model>/<N>/` (N a positive integer in canonical form) that
holds `saved_model.pb`. Exports are renamed into place atomically, so hidden
`.tmp-*` directories, non-numeric names and version directories without
`saved_model.pb` are partial or foreign and are skipped.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SAVED_MODEL_FILE = "saved_model.pb"


class SourceError(Exception):
    """The repository could not be read this time; the caller keeps its current state."""


@dataclass(frozen=True)
class AspiredVersion:
    """One version the source wants loaded.

    `fingerprint` changes when any file under the version directory changes
    (name, size or mtime), so a version that failed to load is retried only
    once its files differ.
    """

    model: str
    version: int
    path: Path
    fingerprint: str


def parse_version(name: str) -> int | None:
    """The version number of a directory name, or None if it is not a version directory."""
    if not name.isascii() or not name.isdigit():
        return None
    version = int(name)
    # "007" and "7" would name the same version; only the canonical spelling counts.
    if version <= 0 or str(version) != name:
        return None
    return version


def fingerprint(path: Path) -> str:
    """A digest of every file's relative path, size and mtime under `path`."""
    digest = hashlib.sha256()
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
    return digest.hexdigest()[:16]


class RepositorySource:
    """Polls a model repository. Stateless between polls, so thread-safe;
    `poll` does blocking file I/O and belongs in an executor."""

    def __init__(self, repo: Path, model_names: Sequence[str] = ()) -> None:
        self.repo = repo
        self.model_names = list(model_names)

    def poll(self) -> dict[str, AspiredVersion | None]:
        """Every model the source serves, mapped to its newest loadable version
        (None when it has none yet). Raises SourceError when a directory
        exists but cannot be listed."""
        names = self.model_names or self._discover_models()
        return {name: self._newest_version(name) for name in names}

    def _discover_models(self) -> list[str]:
        try:
            entries = list(os.scandir(self.repo))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise SourceError(f"cannot list model repository {self.repo}: {e}") from e
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())

    def _newest_version(self, model: str) -> AspiredVersion | None:
        model_dir = self.repo / model
        try:
            entries = list(os.scandir(model_dir))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise SourceError(f"cannot list model directory {model_dir}: {e}") from e
        versions = sorted(
            ((v, Path(e.path)) for e in entries if (v := parse_version(e.name)) is not None and e.is_dir()),
            reverse=True,
        )
        for version, path in versions:
            if (path / SAVED_MODEL_FILE).is_file():
                return AspiredVersion(model, version, path, fingerprint(path))
        return None
