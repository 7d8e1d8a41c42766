"""Reader for the idx format of (Fashion-)MNIST, plain or gzip-compressed.

Layout: a big-endian header — magic (two zero bytes, a type code, the number
of dimensions), then one uint32 per dimension — followed by the values in C
order. Images are idx3 (magic 0x00000803, 16-byte header), labels idx1
(magic 0x00000801, 8-byte header); both hold uint8.

Every check raises IdxFormatError naming the file, the value found and the
value expected: a truncated download must fail loudly, not train on zeros.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_UBYTE = 0x08


class IdxFormatError(ValueError):
    """The file is not the idx file it should be (bad magic, size or shape)."""


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise IdxFormatError(f"{path}: cannot read: {e}") from e


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Parse an idx file of unsigned bytes into a uint8 array of its dimensions."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IdxFormatError(f"{path}: {len(data)} bytes is too short for an idx header (needs at least 4)")
    (magic,) = struct.unpack(">I", data[:4])
    if expected_magic is not None and magic != expected_magic:
        raise IdxFormatError(f"{path}: bad magic number 0x{magic:08x}, expected 0x{expected_magic:08x}")
    if magic >> 16 != 0 or (magic >> 8) & 0xFF != _UBYTE:
        raise IdxFormatError(f"{path}: bad magic number 0x{magic:08x}, expected 0x000008NN (unsigned bytes)")
    ndim = magic & 0xFF
    if ndim == 0:
        raise IdxFormatError(f"{path}: magic 0x{magic:08x} declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"{path}: {len(data)} bytes is too short for a {ndim}-D header ({header} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    payload = len(data) - header
    if payload != expected:
        raise IdxFormatError(
            f"{path}: payload has {payload} bytes but dimensions {list(dims)} need {expected} "
            f"(truncated or corrupt file)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_images(path: str | Path, rows: int = 28, cols: int = 28) -> np.ndarray:
    """uint8 [n, rows, cols] from an idx3 file."""
    arr = read_idx(path, IMAGES_MAGIC)
    if arr.shape[1:] != (rows, cols):
        raise IdxFormatError(f"{path}: images are {list(arr.shape[1:])}, expected [{rows}, {cols}]")
    return arr


def read_idx_labels(path: str | Path) -> np.ndarray:
    """int64 [n] from an idx1 file."""
    return read_idx(path, LABELS_MAGIC).astype(np.int64)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as idx (gzip when the name ends in .gz); for tests and tools."""
    path = Path(path)
    arr = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", (_UBYTE << 8) | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    blob = header + arr.tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)
