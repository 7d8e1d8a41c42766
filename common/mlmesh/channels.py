"""Client channels with the options every mlmesh client uses."""

from __future__ import annotations

import grpc

from mlmesh.settings import DEFAULT_MAX_MESSAGE_BYTES


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Fail fast on a dead peer instead of hanging on a half-open TCP connection.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]


def aio_channel(addr: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(addr, options=channel_options(max_message_bytes))


def sync_channel(addr: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> grpc.Channel:
    return grpc.insecure_channel(addr, options=channel_options(max_message_bytes))
