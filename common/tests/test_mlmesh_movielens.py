"""mlmesh.data.movielens: where the ratings come from, how they parse, how they split."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlmesh.data import DataUnavailable
from mlmesh.data import movielens as ml

pytestmark = pytest.mark.unit

needs_ml100k = pytest.mark.skipif(
    ml.recbole_file() is None, reason="recbole (the carrier of ml-100k.inter) is not installed"
)

U_DATA = "3\t20\t4\t881250949\n1\t10\t5\t891717742\n3\t10\t1\t878887116\n2\t30\t2.5\t880606923\n"


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ml.ENV_VAR, raising=False)
    ml._read.cache_clear()


@needs_ml100k
def test_the_bundled_file_has_the_published_counts() -> None:
    r = ml.load_ratings()
    assert (len(r), r.num_users, r.num_items) == (ml.NUM_RATINGS, ml.NUM_USERS, ml.NUM_ITEMS)
    assert r.user.dtype == np.int64 and r.item.dtype == np.int64 and r.rating.dtype == np.float32
    # Contiguous indices in ascending id order: ML-100k's ids are 1..943 and 1..1682.
    assert r.user_ids.tolist() == list(range(1, 944)) and r.item_ids.tolist() == list(range(1, 1683))
    assert (r.user.min(), r.user.max(), r.item.min(), r.item.max()) == (0, 942, 0, 1681)
    assert set(np.unique(r.rating).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    # The first line of u.data / ml-100k.inter: user 196 rated item 242 with 3.
    assert (r.user[0], r.item[0], r.rating[0]) == (195, 241, 3.0)


@needs_ml100k
def test_the_default_split_is_80_20_disjoint_and_the_same_every_time() -> None:
    train, test = ml.load_split()
    assert (len(train), len(test)) == (80_000, 20_000)
    again_train, again_test = ml.load_split()
    np.testing.assert_array_equal(train.rating, again_train.rating)
    np.testing.assert_array_equal(test.user, again_test.user)
    # Disjoint and complete: each (user, item) pair is rated once in ML-100k.
    pairs = lambda r: set(zip(r.user.tolist(), r.item.tolist(), strict=True))  # noqa: E731
    assert not pairs(train) & pairs(test)
    assert len(pairs(train) | pairs(test)) == ml.NUM_RATINGS
    assert train.num_users == ml.NUM_USERS and test.num_items == ml.NUM_ITEMS


def test_split_indices_are_fixed_by_the_seed_and_partition_the_records() -> None:
    train, test = ml.split_indices(1000, seed=7)
    assert (len(train), len(test)) == (800, 200)
    assert sorted([*train.tolist(), *test.tolist()]) == list(range(1000))
    np.testing.assert_array_equal(ml.split_indices(1000, seed=7)[1], test)
    assert not np.array_equal(ml.split_indices(1000, seed=8)[1], test)
    # Pinned: NumPy's PCG64 stream is stable, so every machine ingests the same split.
    assert ml.split_indices(10, seed=0)[1].tolist() == [4, 6]


def test_split_rejects_a_fraction_outside_0_1() -> None:
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\), got 1.0"):
        ml.split_indices(10, test_fraction=1.0)


def test_grouplens_u_data_parses_without_a_header(tmp_path: Path) -> None:
    path = tmp_path / "u.data"
    path.write_text(U_DATA)
    r = ml.load_ratings(path)
    assert r.user_ids.tolist() == [1, 2, 3] and r.item_ids.tolist() == [10, 20, 30]
    assert r.user.tolist() == [2, 0, 2, 1]
    assert r.item.tolist() == [1, 0, 0, 2]
    assert r.rating.tolist() == [4.0, 5.0, 1.0, 2.5]


def test_inter_columns_are_found_by_header_name(tmp_path: Path) -> None:
    path = tmp_path / "x.inter"
    path.write_text(
        "rating:float\titem_id:token\tuser_id:token\n5\tb\tu2\n3\ta\tu1\n",
    )
    r = ml.load_ratings(path)
    # Non-numeric tokens sort as strings.
    assert r.user_ids.tolist() == ["u1", "u2"] and r.item_ids.tolist() == ["a", "b"]
    assert (r.user.tolist(), r.item.tolist(), r.rating.tolist()) == ([1, 0], [1, 0], [5.0, 3.0])


def test_numeric_ids_sort_as_numbers_not_strings(tmp_path: Path) -> None:
    path = tmp_path / "u.data"
    path.write_text("10\t1\t3\t0\n9\t1\t3\t0\n")
    assert ml.load_ratings(path).user.tolist() == [1, 0]


def test_the_environment_variable_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "u.data"
    path.write_text(U_DATA)
    monkeypatch.setenv(ml.ENV_VAR, str(path))
    assert len(ml.load_ratings()) == 4
    train, test = ml.load_split()
    assert (len(train), len(test)) == (3, 1)


def test_no_file_anywhere_names_both_ways_to_provide_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ml, "recbole_file", lambda: None)
    with pytest.raises(DataUnavailable) as e:
        ml.load_ratings()
    message = str(e.value)
    assert "pip install --no-deps recbole==1.2.1" in message
    assert f"{ml.ENV_VAR}=<file>" in message and "u.data" in message


def test_a_named_file_that_is_missing_is_an_error_even_with_recbole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ml.ENV_VAR, str(tmp_path / "absent.inter"))
    with pytest.raises(DataUnavailable, match=rf"{ml.ENV_VAR}=.*absent.inter is not a file"):
        ml.load_ratings()


def test_a_short_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "u.data"
    path.write_text("1\t2\t3\t4\n1\t2\t3\n")
    with pytest.raises(ml.MovieLensFormatError, match=r"u.data:2: 3 tab-separated fields, expected 4"):
        ml.load_ratings(path)


def test_a_rating_that_is_not_a_number_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "x.inter"
    path.write_text("user_id:token\titem_id:token\trating:float\n1\t2\tfive\n")
    with pytest.raises(ml.MovieLensFormatError, match=r"x.inter:2: rating 'five' is not a number"):
        ml.load_ratings(path)


def test_a_header_without_the_rating_column_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "x.inter"
    path.write_text("user_id:token\titem_id:token\tscore:float\n1\t2\t3\n")
    with pytest.raises(ml.MovieLensFormatError, match=r"lacks columns \['rating'\]"):
        ml.load_ratings(path)


@needs_ml100k
def test_loading_never_imports_recbole() -> None:
    # recbole imports torch; it is only the carrier of the file.
    code = (
        "import sys; from mlmesh.data.movielens import load_split; load_split(); "
        "sys.exit(1 if 'recbole' in sys.modules or 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
