"""CRC-32 of partition blocks (mlmesh.checksum): zlib's values, so files written before verify."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from mlmesh.checksum import crc32

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("size", [0, 1, 7, 64, 4096, 1 << 20])
def test_crc32_equals_zlib_for_any_length(size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size=size, dtype=np.uint8).tobytes()
    assert crc32(data) == zlib.crc32(data)


def test_crc32_continues_from_a_value_as_zlib_does() -> None:
    data = np.random.default_rng(0).integers(0, 256, size=10_000, dtype=np.uint8).tobytes()
    assert crc32(data[4000:], crc32(data[:4000])) == zlib.crc32(data)


def test_crc32_reads_a_memoryview_in_place() -> None:
    column = np.arange(1000, dtype=np.float32)
    view = memoryview(column.view(np.uint8))[12:3012]
    assert crc32(view) == zlib.crc32(view.tobytes())
