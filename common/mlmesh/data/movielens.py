"""MovieLens-100k (GroupLens; research use, cite Harper & Konstan 2015) as NumPy arrays, offline.

Where the ratings come from, in order:

1. `path` when given, else the file named by the `MLMESH_MOVIELENS`
   environment variable (read at call time): a RecBole `.inter` file or
   GroupLens' original `u.data`; a named file must exist;
2. the copy shipped inside the `recbole` package (installed with `--no-deps`,
   as `make setup` does): `<site-packages>/recbole/dataset_example/ml-100k/ml-100k.inter`.
   It is located without importing recbole (which would import torch);
3. otherwise DataUnavailable, naming both ways to provide the file.

Formats (both tab-separated): `.inter` has a header naming typed columns
(`user_id:token item_id:token rating:float timestamp:float`); `u.data` has no
header and the columns user, item, rating, timestamp.

Raw ids become contiguous int64 indices in ascending id order, so for
ML-100k user index = user id - 1 (0..942) and item index = item id - 1
(0..1681). The 80/20 split is a seeded random permutation: the same seed
gives the same split on every machine (NumPy's PCG64 is stable).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlmesh.data.fashion_mnist import DataUnavailable

ENV_VAR = "MLMESH_MOVIELENS"
RECBOLE_RELATIVE = Path("dataset_example") / "ml-100k" / "ml-100k.inter"
NUM_USERS = 943
NUM_ITEMS = 1682
NUM_RATINGS = 100_000
DEFAULT_SEED = 0
DEFAULT_TEST_FRACTION = 0.2
_INTER_COLUMNS = ("user_id", "item_id", "rating")


class MovieLensFormatError(ValueError):
    """The file is not a ratings file of the expected shape; the message names file and line."""


@dataclass(frozen=True)
class Ratings:
    """Ratings as parallel arrays (one entry per rating) plus the id vocabularies.

    user, item: int64 indices into `user_ids` / `item_ids` (the raw ids, ascending).
    rating: float32. Arrays are read-only: shared through a per-process cache.
    """

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.rating)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def take(self, index: np.ndarray) -> Ratings:
        """The ratings at `index`, in that order, with the same vocabularies."""
        return Ratings(
            _frozen(self.user[index]),
            _frozen(self.item[index]),
            _frozen(self.rating[index]),
            self.user_ids,
            self.item_ids,
        )

    def columns(self) -> dict[str, np.ndarray]:
        """The dataset features `mlmesh ingest movielens` writes: user, item, rating."""
        return {"user": self.user, "item": self.item, "rating": self.rating}


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def recbole_file() -> Path | None:
    """The ML-100k file inside an installed recbole package, or None."""
    # find_spec of a top-level package locates it without running its __init__.
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / RECBOLE_RELATIVE
        if candidate.is_file():
            return candidate
    return None


def _how_to(reason: str) -> str:
    return (
        f"MovieLens-100k is not available: {reason}. Provide it either way:\n"
        "  - pip install --no-deps recbole==1.2.1   (ships ml-100k.inter; `make setup` does this), or\n"
        f"  - set {ENV_VAR}=<file>: a RecBole ml-100k.inter or GroupLens' u.data from ml-100k.zip"
    )


def find_file(path: str | Path | None = None) -> Path:
    """The ratings file to read; DataUnavailable (saying how to provide it) when there is none."""
    explicit = path if path is not None else os.environ.get(ENV_VAR) or None
    if explicit is not None:
        candidate = Path(explicit)
        if not candidate.is_file():
            source = "path" if path is not None else ENV_VAR
            raise DataUnavailable(_how_to(f"{source}={candidate} is not a file"))
        return candidate
    found = recbole_file()
    if found is None:
        raise DataUnavailable(
            _how_to(f"{ENV_VAR} is not set and no recbole package holds {RECBOLE_RELATIVE}")
        )
    return found


def _columns(path: Path, header: str) -> tuple[int, int, int, int] | None:
    """(user, item, rating, field count) positions from an .inter header; None for u.data."""
    fields = header.rstrip("\r\n").split("\t")
    if not any(":" in f for f in fields):
        return None
    names = [f.split(":", 1)[0] for f in fields]
    missing = [c for c in _INTER_COLUMNS if c not in names]
    if missing:
        raise MovieLensFormatError(f"{path}:1: header {fields} lacks columns {missing}")
    user, item, rating = (names.index(c) for c in _INTER_COLUMNS)
    return user, item, rating, len(fields)


def _vocabulary(tokens: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ascending unique raw ids, index of each token); numeric ids sort as numbers."""
    raw: np.ndarray
    try:
        raw = np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
        raw = np.array(tokens, dtype=np.str_)
    ids, index = np.unique(raw, return_inverse=True)
    return ids, index.astype(np.int64)


@functools.lru_cache(maxsize=4)
def _read(path: Path) -> Ratings:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise MovieLensFormatError(f"{path}: cannot read: {e}") from e
    if not lines:
        raise MovieLensFormatError(f"{path}: empty file")
    layout = _columns(path, lines[0])
    first = 1 if layout is not None else 0
    u_col, i_col, r_col, width = layout if layout is not None else (0, 1, 2, 4)
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    for number, line in enumerate(lines[first:], start=first + 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != width:
            raise MovieLensFormatError(
                f"{path}:{number}: {len(fields)} tab-separated fields, expected {width}: {line[:80]!r}"
            )
        try:
            value = float(fields[r_col])
        except ValueError:
            raise MovieLensFormatError(f"{path}:{number}: rating {fields[r_col]!r} is not a number") from None
        if not np.isfinite(value):
            raise MovieLensFormatError(f"{path}:{number}: rating {fields[r_col]!r} is not finite")
        users.append(fields[u_col])
        items.append(fields[i_col])
        ratings.append(value)
    if not ratings:
        raise MovieLensFormatError(f"{path}: holds no ratings")
    user_ids, user = _vocabulary(users)
    item_ids, item = _vocabulary(items)
    return Ratings(
        _frozen(user),
        _frozen(item),
        _frozen(np.array(ratings, dtype=np.float32)),
        _frozen(user_ids),
        _frozen(item_ids),
    )


def load_ratings(path: str | Path | None = None) -> Ratings:
    """Every rating in file order (see the module doc for where the file comes from). Thread-safe."""
    return _read(find_file(path).resolve())


def split_indices(
    n: int, seed: int = DEFAULT_SEED, test_fraction: float = DEFAULT_TEST_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) positions of a seeded random split of `n` records, each in permuted order."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = round(n * test_fraction)
    # Permuted, not sorted: ingest cuts datasets into contiguous partitions, which
    # should each be a random sample.
    return perm[n_test:], perm[:n_test]


def load_split(
    seed: int = DEFAULT_SEED,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    *,
    path: str | Path | None = None,
) -> tuple[Ratings, Ratings]:
    """(train, test): an 80/20 (by default) random split of all ratings, fixed by `seed`."""
    ratings = load_ratings(path)
    train, test = split_indices(len(ratings), seed, test_fraction)
    return ratings.take(train), ratings.take(test)
