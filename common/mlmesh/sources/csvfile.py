"""CSV files with a header line, read line by line in batches.

How columns map to fields: a scalar column `x` is the field named `x`; a
column of shape [k, ...] is either the fields `x[0]` .. `x[k-1]` (flattened
in C order) or one field `x` holding k values separated by spaces. Fields the
schema does not name are skipped. Without a schema the header declares one:
every field a scalar, except that `x[0]`, `x[1]`, ... become one column `x`
of shape [k]; int64 when every value of the first rows is an integer, else
float64.

A field value never spans lines (quoted newlines are refused), which is what
lets a growing file be followed by byte offset: `CsvSource(..., start=offset,
complete_lines_only=True)` reads the complete lines after `offset` that were
there when `batches()` started, and `position` says where the next read
starts.
"""

from __future__ import annotations

import csv
import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlmesh.sources.base import BATCH_BYTES, Source, records_per_batch
from mlmesh.sources.schema import Batch, Column, Schema, SchemaError

_INDEXED = re.compile(r"(.+)\[(\d+)\]")
INFER_ROWS = 1000
_TRUE, _FALSE = {"1", "true", "t", "yes"}, {"0", "false", "f", "no"}


@dataclass(frozen=True)
class _Field:
    column: Column
    indices: tuple[int, ...]  # header positions, one per value; or one position holding all values
    packed: bool  # one field holding `column.size` space-separated values


class CsvSource(Source):
    def __init__(
        self,
        path: Path,
        schema: Schema | None = None,
        *,
        start: int = 0,
        start_line: int | None = None,
        first_record: int = 0,
        delimiter: str = ",",
        complete_lines_only: bool = False,
    ) -> None:
        """`start` is a byte offset at a line start (0: just after the header);
        `start_line` its 1-based line number and `first_record` the index of its
        record, both for messages (a follower passes what it saved)."""
        self.path = path
        self.delimiter = delimiter
        self.complete_lines_only = complete_lines_only
        with open(path, "rb") as fh:
            raw = fh.readline()
        if not raw.endswith(b"\n") and (complete_lines_only or not raw):
            raise SchemaError(f"{path}: has no complete header line yet")
        try:
            header = next(csv.reader([raw.decode("utf-8-sig").rstrip("\r\n")], delimiter=delimiter))
        except (UnicodeDecodeError, csv.Error, StopIteration) as e:
            raise SchemaError(f"{path}:1: cannot read the header line: {e}") from None
        self.header = [h.strip() for h in header]
        self._data_start = len(raw)
        self.position = max(start, self._data_start)
        self.line = start_line if start_line is not None and start > 0 else 2
        self.records = first_record
        self.schema = schema if schema is not None else self._infer()
        self._fields = self._plan(self.schema)

    # -- mapping the header ----------------------------------------------------

    def _plan(self, schema: Schema) -> list[_Field]:
        pos = {}
        for i, h in enumerate(self.header):
            if h in pos:
                raise SchemaError(f"{self.path}:1: field {h!r} appears more than once in the header")
            pos[h] = i
        fields = []
        for c in schema.columns:
            indexed = [f"{c.name}[{j}]" for j in range(c.size)]
            if c.shape == () and c.name in pos:
                fields.append(_Field(c, (pos[c.name],), packed=False))
            elif c.shape != () and all(n in pos for n in indexed):
                fields.append(_Field(c, tuple(pos[n] for n in indexed), packed=False))
            elif c.shape != () and c.name in pos:
                fields.append(_Field(c, (pos[c.name],), packed=True))
            else:
                want = (
                    f"{c.name!r}"
                    if c.shape == ()
                    else f"{c.name!r} (k values) or {indexed[0]!r}..{indexed[-1]!r}"
                )
                raise SchemaError(
                    f"{self.path}:1: the header has no field {want} for column {c.name!r} "
                    f"({c.describe()}); it has {self.header}"
                )
        return fields

    def _infer(self) -> Schema:
        groups: dict[str, list[int]] = {}
        for h in self.header:
            m = _INDEXED.fullmatch(h)
            name, index = (m.group(1), int(m.group(2))) if m else (h, -1)
            groups.setdefault(name, []).append(index)
        numbered = list(itertools.islice(self._rows(), INFER_ROWS))
        pos = {h: i for i, h in enumerate(self.header)}
        columns = []
        for name, idx in groups.items():
            if idx == [-1]:
                fields = [pos[name]]
                shape: tuple[int, ...] = ()
            elif sorted(idx) == list(range(len(idx))):
                fields = [pos[f"{name}[{j}]"] for j in range(len(idx))]
                shape = (len(idx),)
            else:
                raise SchemaError(
                    f"{self.path}:1: fields of {name!r} are not {name}[0]..{name}[k-1] (declare a schema)"
                )
            values = [(line, [row[i] for i in fields]) for line, row in numbered]
            columns.append(Column(name, self._infer_dtype(name, values), shape))
        return Schema(tuple(columns))

    def _infer_dtype(self, name: str, values: list[tuple[int, list[str]]]) -> str:
        """int64 if every value is an integer, else float64; SchemaError at a non-number."""
        texts = np.array([v for _, v in values], dtype=str)
        for dtype in ("int64", "float64"):
            try:
                texts.astype(dtype)
                return dtype
            except (ValueError, OverflowError):
                continue
        line, bad = next((n, t) for n, row in values for t in row if not _is_float(t))
        raise SchemaError(
            f"{self.path}:{line}: field {name!r} holds {bad!r}, not a number; declare a schema "
            "(--columns) that leaves it out, or fix the file"
        )

    # -- reading ---------------------------------------------------------------

    def _lines(self) -> Iterator[tuple[int, str, int]]:
        """(line number, text without newline, bytes) of each line from `position` up
        to the file's size now."""
        with open(self.path, "rb") as fh:
            end = os.fstat(fh.fileno()).st_size
            fh.seek(self.position)
            pos, line = self.position, self.line
            while pos < end:
                raw = fh.readline(end - pos)
                if not raw:
                    break
                if not raw.endswith(b"\n") and self.complete_lines_only:
                    return
                try:
                    text = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as e:
                    raise SchemaError(f"{self.path}:{line}: not UTF-8 text: {e}") from None
                yield line, text, len(raw)
                pos += len(raw)
                line += 1

    def _rows(self) -> Iterator[tuple[int, list[str]]]:
        for line, text, _ in self._lines():
            row = self._split(line, text)
            if row is not None:
                yield line, row

    def _split(self, line: int, text: str) -> list[str] | None:
        """The fields of one line; None for a blank line."""
        if not text.strip():
            return None
        try:
            if text.count('"') % 2:
                raise csv.Error("a quoted field runs past the end of the line (fields never span lines)")
            row = next(csv.reader([text], delimiter=self.delimiter, strict=True))
        except csv.Error as e:
            raise SchemaError(f"{self.path}:{line}: malformed CSV: {e}") from None
        if len(row) != len(self.header):
            raise SchemaError(
                f"{self.path}:{line}: malformed CSV: {len(row)} fields but the header has {len(self.header)}"
            )
        return row

    def batches(self, target_bytes: int = BATCH_BYTES) -> Iterator[Batch]:
        size = records_per_batch(self.schema, target_bytes)
        rows: list[tuple[int, list[str]]] = []
        consumed = lines = 0
        for line, text, nbytes in self._lines():
            row = self._split(line, text)
            consumed += nbytes
            lines += 1
            if row is not None:
                rows.append((line, row))
            if len(rows) == size:
                yield self._emit(rows, consumed, lines)
                rows, consumed, lines = [], 0, 0
        if rows:
            yield self._emit(rows, consumed, lines)
        else:
            # Trailing blank lines are consumed too, so a follower does not re-read them.
            self.position += consumed
            self.line += lines

    def _emit(self, rows: list[tuple[int, list[str]]], consumed: int, lines: int) -> Batch:
        batch = {f.column.name: self._convert(f, rows) for f in self._fields}
        out = self.schema.conform(batch, self.records, str(self.path))
        self.position += consumed
        self.line += lines
        self.records += len(rows)
        return out

    def _convert(self, f: _Field, rows: list[tuple[int, list[str]]]) -> np.ndarray:
        c = f.column
        if f.packed:
            cells = []
            for line, row in rows:
                values = row[f.indices[0]].split()
                if len(values) != c.size:
                    raise SchemaError(
                        f"{self.path}:{line} (record {self.records + len(cells)}): column {c.name!r} has "
                        f"{len(values)} values but {c.describe()} needs {c.size}"
                    )
                cells.append(values)
            texts = np.array(cells, dtype=str).reshape(len(rows), c.size)
        else:
            texts = np.array([[row[i] for i in f.indices] for _, row in rows], dtype=str)
        try:
            values = _parse(texts, c.np_dtype)
        except (ValueError, OverflowError):
            self._locate(f, rows, texts)
            raise
        return values.reshape((len(rows), *c.shape))

    def _locate(self, f: _Field, rows: list[tuple[int, list[str]]], texts: np.ndarray) -> None:
        """Raise SchemaError at the first value that does not parse."""
        for k, (line, _) in enumerate(rows):
            for text in texts[k]:
                try:
                    _parse(np.array([text]), f.column.np_dtype)
                except (ValueError, OverflowError):
                    shown = "an empty field" if not text.strip() else repr(str(text))
                    raise SchemaError(
                        f"{self.path}:{line} (record {self.records + k}): column {f.column.name!r}: "
                        f"{shown} is not a valid {f.column.dtype}"
                    ) from None


def _parse(texts: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind == "b":
        low = np.char.lower(np.char.strip(texts))
        ok_true, ok_false = np.isin(low, list(_TRUE)), np.isin(low, list(_FALSE))
        if not (ok_true | ok_false).all():
            raise ValueError("not a boolean")
        return ok_true
    return texts.astype(dtype)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
