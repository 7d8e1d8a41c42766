"""`python -m serving_svc --model-repo R [--model-names a,b] ...`"""

from __future__ import annotations

import asyncio
import os

from mlmesh.settings import load_settings

from serving_svc.config import ServingSettings


def main() -> None:
    settings = load_settings(ServingSettings)
    # TensorFlow's C++ INFO lines (oneDNN, CPU features) would drown the structured logs.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    # Imported only now: TensorFlow takes seconds to import, and a bad flag should fail at once.
    from serving_svc.server import serve

    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
