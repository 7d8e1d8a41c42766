"""mlmesh.data: idx parsing and where Fashion-MNIST comes from."""

from __future__ import annotations

import gzip
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from mlmesh.data import fashion_mnist as fm
from mlmesh.data.idx import IdxFormatError, read_idx, read_idx_images, read_idx_labels, write_idx

pytestmark = pytest.mark.unit


def _write_split(directory: Path, prefix: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return images, labels


@pytest.fixture
def fake_dir(tmp_path: Path) -> Path:
    _write_split(tmp_path, "train", 50, seed=1)
    _write_split(tmp_path, "t10k", 20, seed=2)
    fm._read_dir.cache_clear()
    return tmp_path


@pytest.fixture
def no_default_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fm, "DEFAULT_DIR", tmp_path / "absent")
    monkeypatch.delenv(fm.ENV_VAR, raising=False)


def test_idx_images_round_trip_through_gzip_with_16_byte_header(tmp_path: Path) -> None:
    images = np.arange(3 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(3, 28, 28)
    path = tmp_path / "x-images-idx3-ubyte.gz"
    write_idx(path, images)
    raw = gzip.decompress(path.read_bytes())
    assert struct.unpack(">IIII", raw[:16]) == (0x00000803, 3, 28, 28)
    assert len(raw) == 16 + images.size
    np.testing.assert_array_equal(read_idx_images(path), images)


def test_idx_labels_have_8_byte_header_and_come_back_int64(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    write_idx(path, np.array([3, 1, 4], np.uint8))
    assert path.read_bytes()[:8] == struct.pack(">II", 0x00000801, 3)
    labels = read_idx_labels(path)
    assert labels.dtype == np.int64
    assert labels.tolist() == [3, 1, 4]


def test_bad_magic_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">IIII", 0x00000802, 1, 28, 28) + b"\0" * 784)
    with pytest.raises(IdxFormatError, match=r"bad magic number 0x00000802, expected 0x00000803"):
        read_idx_images(path)


def test_labels_file_given_as_images_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "labels.gz"
    write_idx(path, np.zeros(5, np.uint8))
    with pytest.raises(IdxFormatError, match="bad magic number 0x00000801, expected 0x00000803"):
        read_idx_images(path)


def test_truncated_payload_names_sizes(tmp_path: Path) -> None:
    path = tmp_path / "short.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">IIII", 0x00000803, 2, 28, 28) + b"\0" * 1000)
    with pytest.raises(
        IdxFormatError, match=r"payload has 1000 bytes but dimensions \[2, 28, 28\] need 1568"
    ):
        read_idx(path)


def test_file_shorter_than_a_header_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "tiny"
    path.write_bytes(b"\0\0")
    with pytest.raises(IdxFormatError, match="too short for an idx header"):
        read_idx(path)


def test_corrupt_gzip_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.gz"
    path.write_bytes(b"definitely not gzip")
    with pytest.raises(IdxFormatError, match="cannot read"):
        read_idx(path)


def test_wrong_image_size_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "img.gz"
    write_idx(path, np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(IdxFormatError, match=r"images are \[32, 32\], expected \[28, 28\]"):
        read_idx_images(path)


def test_mlmesh_data_env_overrides_the_directory(fake_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fm.ENV_VAR, str(fake_dir))
    images, labels = fm.load_fashion_mnist("train", allow_download=False)
    assert images.shape == (50, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (50,) and labels.dtype == np.int64
    test_images, _ = fm.load_fashion_mnist("test", limit=7, allow_download=False)
    assert test_images.shape == (7, 28, 28)


def test_limit_keeps_the_first_records_in_order(fake_dir: Path) -> None:
    full, full_labels = fm.load_fashion_mnist("train", data_dir=fake_dir)
    some, some_labels = fm.load_fashion_mnist("train", limit=10, data_dir=fake_dir)
    np.testing.assert_array_equal(some, full[:10])
    np.testing.assert_array_equal(some_labels, full_labels[:10])


def test_env_dir_without_files_fails_without_falling_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path))
    with pytest.raises(fm.DataUnavailable) as e:
        fm.load_fashion_mnist("train")
    assert f"MLMESH_DATA={tmp_path} holds no Fashion-MNIST idx files" in str(e.value)


def test_nothing_available_names_both_ways(no_default_dir: None) -> None:
    with pytest.raises(fm.DataUnavailable) as e:
        fm.load_fashion_mnist("test", allow_download=False)
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "MLMESH_DATA=<dir>" in msg


def _fake_keras(monkeypatch: pytest.MonkeyPatch, load_data: object) -> list[int]:
    """Stand-in for keras (no network here): records how often the download ran."""
    calls: list[int] = []

    def counted() -> object:
        calls.append(1)
        return load_data() if callable(load_data) else load_data

    module = types.ModuleType("keras")
    module.datasets = types.SimpleNamespace(fashion_mnist=types.SimpleNamespace(load_data=counted))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "keras", module)
    return calls


def test_keras_download_is_the_last_resort(no_default_dir: None, monkeypatch: pytest.MonkeyPatch) -> None:
    train = (np.zeros((4, 28, 28), np.uint8), np.arange(4, dtype=np.uint8))
    test = (np.ones((2, 28, 28), np.uint8), np.array([7, 8], np.uint8))
    calls = _fake_keras(monkeypatch, (train, test))
    images, labels = fm.load_fashion_mnist("test", limit=1)
    assert calls == [1]
    assert images.shape == (1, 28, 28) and labels.tolist() == [7] and labels.dtype == np.int64


def test_keras_is_not_tried_when_files_exist(fake_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_keras(monkeypatch, None)
    monkeypatch.setenv(fm.ENV_VAR, str(fake_dir))
    fm.load_fashion_mnist("train")
    assert calls == []


def test_failed_download_names_both_ways(no_default_dir: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline() -> None:
        raise OSError("network unreachable")

    _fake_keras(monkeypatch, offline)
    with pytest.raises(fm.DataUnavailable) as e:
        fm.load_fashion_mnist("train")
    msg = str(e.value)
    assert "Keras download failed (OSError: network unreachable)" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "MLMESH_DATA" in msg


def test_bad_split_and_limit_are_rejected(fake_dir: Path) -> None:
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        fm.load_fashion_mnist("validation", data_dir=fake_dir)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit must be >= 0"):
        fm.load_fashion_mnist("train", limit=-1, data_dir=fake_dir)


@pytest.mark.skipif(
    fm._files(fm.DEFAULT_DIR, "test") is None, reason="Debian package dataset-fashion-mnist not installed"
)
def test_real_debian_test_split_has_1000_images_per_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fm.ENV_VAR, raising=False)
    images, labels = fm.load_fashion_mnist("test", allow_download=False)
    assert images.shape == (10_000, 28, 28)
    assert np.bincount(labels, minlength=10).tolist() == [1000] * 10
    assert 0 < images.mean() < 255
