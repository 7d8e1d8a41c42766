"""Atomic small-file writes, shared by every service and the CLI.

Readers of port files, suite.json, job records, Envoy's bootstrap and the
demo summary see either the old file or the new one, whole: write a temp file
in the same directory, fsync it, rename it over the target, fsync the
directory (so the rename itself survives a crash).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in directory `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically, creating its directory if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, value: Any, indent: int | None = 2) -> None:
    atomic_write_bytes(path, json.dumps(value, indent=indent, default=str).encode())
