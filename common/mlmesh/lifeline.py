"""A child's lifeline to the mlmesh supervisor that started it.

The supervisor puts its pid in the child's environment (`MLMESH_PARENT_PID`)
instead of setting PR_SET_PDEATHSIG from a `preexec_fn`: a `preexec_fn` makes
Python fork() rather than vfork(), and a fork() runs gRPC's C-core atfork
handlers, which abort the child before it execs when other threads of the
supervisor are inside gRPC (its health probes): seen here as a child dying
with SIGABRT, "epoll_wait error: Bad file descriptor", at start.
"""

from __future__ import annotations

import ctypes
import os
import signal

PARENT_PID_ENV = "MLMESH_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """If a supervisor started this process, get SIGKILL when it dies; exit now if it already has.

    Call first thing in a service process (`mlmesh.server.run_service` does). Linux only;
    elsewhere it does nothing.
    """
    raw = os.environ.get(PARENT_PID_ENV, "")
    if not raw.isdigit():
        return
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(raw):  # it died before we could ask to follow it
        os._exit(1)
