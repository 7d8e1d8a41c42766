"""python -m paramserver_svc --shard-index I --num-shards N --checkpoint-dir D"""

from __future__ import annotations

import asyncio

from mlmesh.settings import load_settings

from paramserver_svc.config import ParamServerSettings
from paramserver_svc.server import serve


def main() -> None:
    settings = load_settings(ParamServerSettings)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
