"""`python -m gateway --backends A0,A1 --work-dir W [--port 0] [--admin-port 0] [--base-id N]`."""

from __future__ import annotations

import asyncio

from mlmesh.settings import load_settings

from gateway.config import GatewaySettings
from gateway.server import run_gateway


def main() -> None:
    settings = load_settings(GatewaySettings)
    raise SystemExit(asyncio.run(run_gateway(settings)))


if __name__ == "__main__":
    main()
