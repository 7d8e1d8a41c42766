"""SequentialWriter: partition files written around the page cache hold exactly the bytes given."""

from __future__ import annotations

import errno
import os
import resource
from pathlib import Path

import numpy as np
import pytest

from ingest_svc.core import direct
from ingest_svc.core.direct import ALIGN, STAGING_BYTES, SequentialWriter
from ingest_svc.core.files import read_partition, write_partition
from ingest_svc.core.schema import FeatureSpec, Schema

pytestmark = pytest.mark.unit

# Lengths around every boundary the writer cares about: a block, the staging buffer.
SIZES = [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, STAGING_BYTES - 1, STAGING_BYTES, STAGING_BYTES + 3 * ALIGN + 5]


def _random(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("size", SIZES)
def test_file_holds_exactly_the_bytes_written(tmp_path: Path, size: int) -> None:
    data = _random(size)
    path = tmp_path / "f"
    with SequentialWriter(path) as out:
        # Uneven pieces, as a partition's header, padding and column slices come.
        for lo in range(0, size, 3 * ALIGN + 7):
            out.write(memoryview(data)[lo : lo + 3 * ALIGN + 7])
    assert path.read_bytes() == data


def test_writes_bypass_the_page_cache_where_the_file_system_allows(tmp_path: Path) -> None:
    writer = SequentialWriter(tmp_path / "f")
    try:
        # ext4, xfs, btrfs and tmpfs (Linux >= 6.6) take O_DIRECT; this is where the tests run.
        assert writer.direct
    finally:
        writer.discard()


def test_a_file_system_without_o_direct_gets_the_same_bytes_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def no_direct(path: str | os.PathLike[str], flags: int, *args: int) -> int:
        if flags & os.O_DIRECT:  # as tmpfs before Linux 6.6 and some network file systems answer
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real_open(path, flags, *args)

    monkeypatch.setattr(direct.os, "open", no_direct)
    data = _random(STAGING_BYTES + 100)
    with SequentialWriter(tmp_path / "f") as out:
        assert not out.direct
        out.write(data)
    assert (tmp_path / "f").read_bytes() == data


def test_a_size_limit_mid_write_fails_with_its_own_error_not_einval(tmp_path: Path) -> None:
    # Python ignores SIGXFSZ, so passing RLIMIT_FSIZE fails with EFBIG, as a full disk fails
    # with ENOSPC. The limit falls inside a block, so the direct write is cut short unaligned.
    limit = 3 * ALIGN + 100
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    out = SequentialWriter(tmp_path / "f")
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        with pytest.raises(OSError) as info:
            out.write(_random(2 * STAGING_BYTES))
            out.close()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        out.discard()
    assert info.value.errno == errno.EFBIG


def test_a_partition_written_around_the_page_cache_maps_and_verifies(tmp_path: Path) -> None:
    schema = Schema.build([FeatureSpec("label", "int64", ()), FeatureSpec("x", "float32", (784,))])
    n = 3000  # ~9.4 MB: several staging buffers and checksummed blocks
    rng = np.random.default_rng(3)
    cols = {"label": np.arange(n, dtype=np.int64), "x": rng.random((n, 784), dtype=np.float32)}
    path = tmp_path / "p.bin"
    write_partition(path, schema, {k: [v[:1000], v[1000:]] for k, v in cols.items()}, n)
    data = read_partition(path, schema)  # mapped: the pages come from the device
    data.verify(0, n)
    for name, col in cols.items():
        np.testing.assert_array_equal(data.column(name), col)
