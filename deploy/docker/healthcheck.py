"""Container HEALTHCHECK: exit 0 when the process at 127.0.0.1 is healthy, 1 otherwise.

`healthcheck.py HOST:PORT` asks grpc.health.v1 (overall status "", SERVING only once the
service's start-up finished); `healthcheck.py http://HOST:PORT/PATH` expects HTTP 200 (Envoy).
Standard library and grpcio only, so it runs in every image.
"""

from __future__ import annotations

import sys
import urllib.request


def main(target: str) -> int:
    if target.startswith("http://"):
        try:
            with urllib.request.urlopen(target, timeout=3) as resp:
                return 0 if resp.status == 200 else 1
        except OSError:
            return 1
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.RpcError:
            return 1
    return 0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
