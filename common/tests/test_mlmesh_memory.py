"""mlmesh.memory: malloc keeps tensor-sized blocks instead of page-faulting them in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

# Encode a 16 MiB tensor into a message and serialize it, ten times: what a shard does per
# pull of a 16 MiB variable. Prints the minor page faults of the loop.
PROBE = """
import resource, sys
import numpy as np
from mlmesh import tensor
from mlmesh.memory import keep_large_blocks
if sys.argv[1] == "tuned":
    assert keep_large_blocks()
g = np.full((1024, 4096), 1e-3, np.float32)
tensor.to_proto(g).SerializeToString()  # warm up
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    tensor.to_proto(g).SerializeToString()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().splitlines()[-1])


def test_tensor_sized_buffers_stop_page_faulting_once_kept() -> None:
    default, tuned = faults("default"), faults("tuned")
    # 10 rounds x 2 buffers x 4096 pages with glibc's defaults; a few hundred when kept.
    assert default > 20_000, default
    assert tuned < default / 10, (tuned, default)
