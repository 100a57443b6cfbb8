"""Request bodies: random bytes, protobuf-shaped bytes (real tags of the request message with
wrong or right wire types), gRPC length-prefixed framing done right and done wrong, and
random JSON and not-JSON for the transcoder. Every function draws from the `random.Random` it
is given, so a seed replays a run."""

from __future__ import annotations

import gzip
import json
import random
import struct
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

MAX_RANDOM_BYTES = 2048


def random_bytes(rng: random.Random) -> bytes:
    """Mostly short, sometimes up to MAX_RANDOM_BYTES, sometimes empty."""
    size = rng.choice((0, 1, 2, 3, 5, 8, rng.randint(1, 64), rng.randint(64, MAX_RANDOM_BYTES)))
    return rng.randbytes(size)


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(rng: random.Random, number: int, wire_type: int) -> bytes:
    tag = _varint(number << 3 | wire_type)
    if wire_type == 0:
        return tag + _varint(rng.choice((0, 1, -1, 2**31, 2**63 - 1, rng.getrandbits(64))))
    if wire_type == 1:
        return tag + rng.randbytes(8)
    if wire_type == 5:
        return tag + rng.randbytes(4)
    if wire_type == 2:
        odd = (b"", "ü\u2028".encode(), b"\xff\xfe")
        payload = rng.choice((*odd, rng.randbytes(rng.randint(0, 40))))
        # Sometimes a length that runs past the end of the message.
        length = len(payload) + rng.choice((0, 0, 0, 1, 1000))
        return tag + _varint(length) + payload
    return tag  # 3 and 4: group markers, 6 and 7: invalid wire types


WIRE_TYPES = {
    FieldDescriptor.TYPE_STRING: 2,
    FieldDescriptor.TYPE_BYTES: 2,
    FieldDescriptor.TYPE_MESSAGE: 2,
    FieldDescriptor.TYPE_DOUBLE: 1,
    FieldDescriptor.TYPE_FIXED64: 1,
    FieldDescriptor.TYPE_FLOAT: 5,
    FieldDescriptor.TYPE_FIXED32: 5,
}


def protobuf_shaped(rng: random.Random, message: Descriptor | None) -> bytes:
    """A few fields of `message` (right or wrong wire type, values anything), unknown field
    numbers, sometimes an invalid wire type: what a confused or hostile client encodes."""
    numbers = [f.number for f in message.fields] if message is not None else []
    parts = []
    for _ in range(rng.randint(0, 6)):
        if numbers and rng.random() < 0.7:
            field = rng.choice(message.fields if message is not None else [])
            right = WIRE_TYPES.get(field.type, 0)
            wire = right if rng.random() < 0.6 else rng.choice((0, 1, 2, 3, 4, 5, 6, 7))
            parts.append(_field(rng, field.number, wire))
        else:
            parts.append(_field(rng, rng.choice((19000, 536870911, rng.randint(1, 99))), 2))
    return b"".join(parts)


# --- gRPC framing ------------------------------------------------------------------------------


def frame(message: bytes, compressed: bool = False) -> bytes:
    """A gRPC length-prefixed message: flag byte, 4-byte big-endian length, the message."""
    return struct.pack(">BI", int(compressed), len(message)) + message


def _gzip(message: bytes) -> bytes:
    return gzip.compress(message, mtime=0)


FRAMINGS: dict[str, Callable[[random.Random, bytes], tuple[bytes, ...]]] = {
    # One DATA frame each unless the framing is about how the bytes are split.
    "well-framed": lambda rng, m: (frame(m),),
    "no body": lambda rng, m: (),
    "empty DATA frame": lambda rng, m: (b"",),
    "3-byte header": lambda rng, m: (frame(m)[:3],),
    "header only": lambda rng, m: (struct.pack(">BI", 0, len(m) + 1),),
    "length prefix too long": lambda rng, m: (
        struct.pack(">BI", 0, len(m) + rng.choice((1, 7, 1 << 20))) + m,
    ),
    "length prefix too short": lambda rng, m: (struct.pack(">BI", 0, len(m) // 2) + m + b"\0",),
    "length prefix 4 GiB": lambda rng, m: (struct.pack(">BI", 0, 0xFFFFFFFF) + m,),
    "two messages": lambda rng, m: (frame(m) + frame(m),),
    "two messages, two DATA frames": lambda rng, m: (frame(m), frame(m)),
    "split in 1-byte DATA frames": lambda rng, m: tuple(bytes([b]) for b in frame(m)[:40]),
    "compressed flag, no encoding": lambda rng, m: (frame(m, compressed=True),),
    "compressed flag, gzip body": lambda rng, m: (frame(_gzip(m), compressed=True),),
    "flag byte 0x80": lambda rng, m: (b"\x80" + frame(m)[1:],),
    "trailing garbage": lambda rng, m: (frame(m) + rng.randbytes(rng.randint(1, 4)),),
}
"""Name -> the DATA frames carrying `message` that way."""


# --- JSON for the transcoder --------------------------------------------------------------------

JSON_SCALARS: tuple[Any, ...] = (
    None,
    True,
    0,
    -1,
    2**63,
    -(2**70),
    1e308,
    0.5,
    "",
    "x" * 300,
    "\u0000",
    "é✓\U0001f600",
    "1",
    "NaN",
    "2026-01-01T00:00:00Z",
    "STICKER-01",
    "tok_visa",
)


def _json_value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        return rng.choice(JSON_SCALARS)
    if roll < 0.75:
        return [_json_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = ("a", "id", "sku", "items", "@type", "", "user_id")
    return {rng.choice(keys): _json_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def random_json(rng: random.Random, message: Descriptor | None) -> bytes:
    """A JSON document: an object with the request's own field names (camelCase or as in the
    proto) holding values of any type, or any other JSON value, sometimes deeply nested."""
    roll = rng.random()
    if roll < 0.1:
        return ("[" * 200 + "]" * 200).encode()
    if roll < 0.6 and message is not None and message.fields:
        names = [f.json_name for f in message.fields] + [f.name for f in message.fields]
        document: Any = {
            rng.choice(names): _json_value(rng, 0) for _ in range(rng.randint(1, len(names)))
        }
    else:
        document = _json_value(rng, 0)
    return json.dumps(document, ensure_ascii=rng.random() < 0.5).encode()


NOT_JSON: tuple[bytes, ...] = (
    b"{",
    b'{"sku": "STICKER-01"',
    b"sku=STICKER-01",
    b"<xml/>",
    b"\xff\xfe{\x00}\x00",
    b'{"sku": "STICKER-01"} trailing',
    b"null",
    b"",
)


def not_json(rng: random.Random) -> bytes:
    return rng.choice((*NOT_JSON, random_bytes(rng)))
