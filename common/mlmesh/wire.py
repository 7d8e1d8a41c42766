"""Protocol-buffer wire format by hand, for the few messages that carry bulk bytes.

The generated classes copy a `bytes` field on parse and again on serialize; for
messages that are mostly tensor bytes that is most of their cost. These helpers
write and read the same wire format (so any protobuf client still understands
it) with one copy on write and none on read. Only what those messages use is
here: varints and length-delimited fields.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from mlmesh.errors import InvalidArgument

VARINT = 0
LEN = 2
_FIXED64 = 1
_FIXED32 = 5


def varint(n: int) -> bytes:
    """`n` (>= 0) as a base-128 varint."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def len_prefix(number: int, length: int) -> bytes:
    """The tag and length that go before a length-delimited field of `length` bytes."""
    return tag(number, LEN) + varint(length)


def read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """(value, position after it); InvalidArgument on a truncated or overlong varint."""
    value, shift = 0, 0
    while pos < len(buf) and shift < 64:
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise InvalidArgument("malformed message: truncated varint")


def fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) for each field of a message: an int for varints,
    a view (no copy) for length-delimited fields; fixed-width fields are skipped."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == VARINT:
            value, pos = read_varint(buf, pos)
            yield number, wire_type, value
        elif wire_type == LEN:
            length, pos = read_varint(buf, pos)
            if pos + length > end:
                raise InvalidArgument("malformed message: a field runs past its end")
            yield number, wire_type, buf[pos : pos + length]
            pos += length
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _FIXED32:
            pos += 4
        else:
            raise InvalidArgument(f"malformed message: wire type {wire_type}")
    if pos != end:
        raise InvalidArgument("malformed message: a field runs past its end")


def packed_varints(buf: memoryview) -> list[int]:
    out, pos = [], 0
    while pos < len(buf):
        value, pos = read_varint(buf, pos)
        out.append(value)
    return out


def signed64(value: int) -> int:
    """An int64 field's varint as a Python int (negatives are ten-byte two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


M = TypeVar("M", bound=Message)


def parse(cls: type[M], data: bytes, where: str) -> M:
    """`data` parsed as a `cls` message; InvalidArgument names `where` and the message type
    (a servicer that takes raw bytes parses its messages itself, so it must say so too)."""
    try:
        return cls.FromString(data)
    except DecodeError as e:
        raise InvalidArgument(
            f"{where}: the bytes do not parse as {cls.DESCRIPTOR.full_name} ({e})"
        ) from None
