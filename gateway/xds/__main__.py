"""`python -m gateway.xds --registry static:serving=A0,A1 [--config gateway/gateway.yaml] [--port 0]`."""

from __future__ import annotations

import asyncio

from mlmesh.settings import load_settings

from gateway.xds.config import XdsSettings
from gateway.xds.server import serve


def main() -> None:
    asyncio.run(serve(load_settings(XdsSettings)))


if __name__ == "__main__":
    main()
