"""`python -m trainer_svc coordinator|worker [flags]` — see trainer_svc.config for the flags."""

from __future__ import annotations

import asyncio
import os
import sys

USAGE = """usage: python -m trainer_svc {coordinator,worker} [--help] [flags]

  coordinator  the job coordinator (TrainerService); env prefix MLMESH_TRAINER_
  worker       a training worker; env prefix MLMESH_WORKER_
"""


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("coordinator", "worker"):
        print(USAGE, file=sys.stderr)
        raise SystemExit(0 if args and args[0] in ("-h", "--help") else 2)
    # Before TensorFlow loads: its C++ start-up chatter is not our log.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from mlmesh.settings import load_settings

    from trainer_svc import server
    from trainer_svc.config import CoordinatorSettings, WorkerSettings

    role, rest = args[0], args[1:]
    if role == "coordinator":
        asyncio.run(server.serve_coordinator(load_settings(CoordinatorSettings, rest)))
    else:
        asyncio.run(server.serve_worker(load_settings(WorkerSettings, rest)))


if __name__ == "__main__":
    main()
