"""`python -m ingest_svc --data-dir D [--port 0 --port-file F ...]`"""

from __future__ import annotations

import asyncio

from mlmesh.settings import load_settings

from ingest_svc.config import IngestSettings
from ingest_svc.core.ingest import DataDirInUse
from ingest_svc.server import serve


def main() -> None:
    settings = load_settings(IngestSettings)
    try:
        asyncio.run(serve(settings))
    except DataDirInUse as e:
        raise SystemExit(f"ingest_svc: {e}") from None


if __name__ == "__main__":
    main()
