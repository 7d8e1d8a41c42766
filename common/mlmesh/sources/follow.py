"""Following a growing source: what is new since the last append, remembered in a state file.

Two kinds of growth:

- a directory where new files appear (any format `open_file` reads): each
  file is appended once, in name order, as one Append stream. Hidden files
  and `*.tmp` / `*.part` are skipped, so a producer that writes a file under
  such a name and renames it into place is never read half-written;
- a CSV file that grows: the complete lines after the byte offset reached
  last time (a line still being written waits for its newline).

The state file (JSON, replaced atomically) is written right after each
Append commits. A crash between the commit and that write appends the same
file (or lines) again on restart: at-least-once, with a window of one
write. The state also records the dataset's `created_unix`, so a state file
is not silently reused against a different dataset of the same name.

Not thread-safe: one follower per state file (the CLI runs one loop).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlmesh.files import atomic_write_json
from mlmesh.sources import FORMATS, open_file
from mlmesh.sources.base import Source
from mlmesh.sources.csvfile import CsvSource
from mlmesh.sources.schema import Schema, SchemaError

STATE_VERSION = 1
HEAD_BYTES = 4096
SKIPPED_SUFFIXES = (".tmp", ".part")


class FollowError(RuntimeError):
    """The source or the state file is not what the state says (replaced, truncated, foreign)."""


@dataclass
class FollowState:
    source: str
    dataset: str
    dataset_created_unix: float = 0.0
    files: dict[str, int] = field(default_factory=dict)  # directory mode: file name -> records
    offset: int = 0  # file mode: bytes consumed (0 = nothing yet)
    line: int = 0  # file mode: line number at `offset`
    inode: int = 0  # file mode: (st_dev, st_ino) of the file we follow, to notice a replacement
    device: int = 0
    # file mode: sha1 of the first min(offset, HEAD_BYTES) bytes; an inode number alone is
    # reused at once when a file is deleted and written anew.
    head_sha1: str = ""
    records: int = 0  # records appended from this source


@dataclass
class Pending:
    """Something new to append: `source`, then `commit(records)` once the Append succeeded."""

    label: str
    source: Source
    _follower: Follower
    _name: str | None = None

    def commit(self, records: int) -> None:
        """Record that the Append of `records` records from this source committed."""
        self._follower._commit(self, records)


def default_state_path(root: Path, source: Path, dataset: str) -> Path:
    digest = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:12]
    return root / "ingest" / "follow" / f"{dataset}-{digest}.json"


class Follower:
    def __init__(self, source: Path, dataset: str, state_path: Path, schema: Schema | None = None) -> None:
        self.path = source
        self.dataset = dataset
        self.state_path = state_path
        self.schema = schema
        self.state = self._load()

    # -- the state file ---------------------------------------------------------

    def _load(self) -> FollowState:
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return FollowState(source=str(self.path.resolve()), dataset=self.dataset)
        except (OSError, ValueError) as e:
            raise FollowError(f"cannot read state file {self.state_path}: {e}") from None
        if data.get("version") != STATE_VERSION:
            raise FollowError(
                f"state file {self.state_path} has version {data.get('version')}, not {STATE_VERSION}"
            )
        data.pop("version")
        state = FollowState(**data)
        if state.dataset != self.dataset or state.source != str(self.path.resolve()):
            raise FollowError(
                f"state file {self.state_path} follows {state.source} into {state.dataset!r}, "
                f"not {self.path.resolve()} into {self.dataset!r}"
            )
        return state

    def _save(self) -> None:
        atomic_write_json(self.state_path, {"version": STATE_VERSION, **asdict(self.state)})

    def bind(self, dataset_created_unix: float) -> None:
        """Tie the state to the dataset as it exists at ingest; FollowError if the
        state was written for another dataset of that name (e.g. a new data dir)."""
        s = self.state
        if s.dataset_created_unix and s.dataset_created_unix != dataset_created_unix:
            raise FollowError(
                f"state file {self.state_path} was written for dataset {self.dataset!r} created at "
                f"{s.dataset_created_unix:.3f}, but the dataset at ingest was created at "
                f"{dataset_created_unix:.3f} (another data dir?); delete the state file to append "
                "the source again from its start"
            )
        if not s.dataset_created_unix:
            s.dataset_created_unix = dataset_created_unix
            self._save()

    # -- what is new ------------------------------------------------------------

    def poll(self) -> Iterator[Pending]:
        """What is new right now, oldest first. Commit each before taking the next
        (each source is opened when it is reached, so its schema is read then)."""
        if self.path.is_dir():
            yield from self._poll_dir()
        else:
            p = self._poll_file()
            if p is not None:
                yield p

    def _poll_dir(self) -> Iterator[Pending]:
        for entry in sorted(self.path.iterdir(), key=lambda p: p.name):
            name = entry.name
            if (
                name in self.state.files
                or name.startswith(".")
                or name.endswith(SKIPPED_SUFFIXES)
                or entry.suffix.lower() not in FORMATS
                or not entry.is_file()
            ):
                continue
            yield Pending(name, open_file(entry, self.schema), self, name)

    def _poll_file(self) -> Pending | None:
        if self.path.suffix.lower() != ".csv":
            raise FollowError(f"{self.path}: only a CSV file (or a directory) can be followed as it grows")
        st = os.stat(self.path)
        s = self.state
        if s.offset:
            if (st.st_dev, st.st_ino) != (s.device, s.inode) or _head_sha1(
                self.path, s.offset
            ) != s.head_sha1:
                raise FollowError(
                    f"{self.path} was replaced (another inode, or other first bytes) since "
                    f"{s.offset} bytes of it were appended; "
                    f"delete {self.state_path} to append the new file from its start"
                )
            if st.st_size < s.offset:
                raise FollowError(
                    f"{self.path} shrank to {st.st_size} bytes but {s.offset} were already appended "
                    f"(truncated?); delete {self.state_path} to append it again from its start"
                )
            if st.st_size == s.offset:
                return None
        try:
            source = CsvSource(
                self.path,
                self.schema,
                start=s.offset,
                start_line=s.line or None,
                first_record=s.records,
                complete_lines_only=True,
            )
        except SchemaError as e:
            if "no complete header line" in str(e):
                return None  # the producer has not written the header yet
            raise
        s.device, s.inode = st.st_dev, st.st_ino
        return Pending(f"{self.path.name} from line {source.line}", source, self)

    def _commit(self, pending: Pending, records: int) -> None:
        s = self.state
        if pending._name is not None:
            s.files[pending._name] = records
            s.records += records
        else:
            assert isinstance(pending.source, CsvSource)
            s.records = pending.source.records
            s.offset, s.line = pending.source.position, pending.source.line
            s.head_sha1 = _head_sha1(self.path, s.offset)
        self._save()


def _head_sha1(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        return hashlib.sha1(f.read(min(offset, HEAD_BYTES))).hexdigest()
