"""Staggered loads: replicas sharing a model repository take turns loading a model.

Loading a version is CPU-heavy for a moment (restoring the graph, warming it up).
When every replica polls the same repository, all of them load a new version at
the same instant and every replica is slow at once, so the gateway has nowhere
fast to send requests. An exclusive `flock` on the model's directory (the parent
of its version directories) makes replicas on one host, or on a shared file system
that supports flock, load one after another, while the others keep serving at full
speed. The lock needs only read access to the directory, and the kernel releases
it when its holder dies, so a killed replica cannot block the others; a holder
that hangs is waited for at most `timeout_s`, then the load goes ahead anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

POLL_S = 0.05


@contextlib.contextmanager
def turn_to_load(model_dir: Path, timeout_s: float) -> Iterator[float]:
    """Hold the model directory's load lock for the block; yields the seconds waited
    for it. Blocking: call it on a load thread. Without a lockable directory (or with
    `timeout_s` 0) the block runs at once."""
    fd = -1
    waited = 0.0
    if timeout_s > 0:
        with contextlib.suppress(OSError):
            fd = os.open(model_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if fd >= 0:
            started = time.monotonic()
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() - started >= timeout_s:
                        break  # a stuck holder: load anyway rather than never
                    time.sleep(POLL_S)
                except OSError:
                    break  # the file system cannot lock: no staggering
            waited = time.monotonic() - started
        yield waited
    finally:
        if fd >= 0:
            os.close(fd)  # releases the lock too


def lower_thread_priority(niceness: int) -> None:
    """Give the calling thread (only it: Linux schedules threads as tasks) the nice value
    `niceness`, so a load yields the CPU to serving threads and other processes. Never
    raises: without the permission or the platform, loads run at normal priority."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
            os.setpriority(os.PRIO_PROCESS, tid, niceness)
