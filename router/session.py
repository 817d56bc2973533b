"""What the blocking and asyncio SDKs share besides the engine: payload encoding, the
name rules, the errors they raise and the events they hand out.

The protocol state itself (HELLO, heartbeats, acks, dedup of redelivered sequences,
resends after a re-HELLO) lives in the native client engine, :mod:`router.engine`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Union

import lz4.frame
import orjson

from . import protocol as P
from .protocol import Delivery, ErrorCode, Flag, Receipt

#: Payloads larger than this many bytes are lz4-compressed by default.
COMPRESS_ABOVE = 512
#: Largest TTL a SEND can carry (its field is 32 bits of milliseconds, about 49 days).
MAX_TTL_MS = 0xFFFFFFFF

Payload = Union[bytes, bytearray, memoryview, str, dict, list]


class RouterError(Exception):
    """The router refused a request; ``code`` says why (see protocol.ErrorCode)."""

    def __init__(self, code: ErrorCode, msg_id: int, text: str) -> None:
        super().__init__(f"router error {code.name} (msg {msg_id}): {text}")
        self.code, self.msg_id, self.text = code, msg_id, text


class RouterUnavailable(TimeoutError):
    """No answer from the router in time: check its address and that it is running."""


#: The SDK's rule for an address: ``<kind>:<id>``, both parts non-empty, 1..255 bytes
#: of printable ASCII without spaces (docs/PROTOCOL.md, "Names"). The router refuses
#: others with BAD_ADDRESS; checking here turns a refusal that arrives later (or a
#: message queued forever for ``merchant:``) into a ValueError at the call.
_ADDRESS = re.compile(r"[\x21-\x39\x3b-\x7e]+:[\x21-\x7e]+")
#: A channel name: 1..255 bytes of printable ASCII without spaces.
_CHANNEL = re.compile(r"[\x21-\x7e]+")


def check_address(name: str, what: str = "address") -> str:
    """Return ``name`` if it is a valid address (``<kind>:<id>``), else raise ValueError
    saying what is wrong and what a good one looks like."""
    _check_name(name, what, _ADDRESS, "<kind>:<id> with both parts non-empty, "
                "for example merchant:881")
    return name


def check_channel(name: str) -> str:
    """Return ``name`` if it is a valid channel name, else raise ValueError."""
    _check_name(name, "channel", _CHANNEL, "printable ASCII without spaces, for example "
                "order:1001")
    return name


def _check_name(name: str, what: str, pattern: re.Pattern, rule: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, got {type(name).__name__}")
    size = len(name.encode())
    if not 1 <= size <= P.MAX_NAME:
        raise ValueError(f"{what} {name[:40]!r}{'...' if len(name) > 40 else ''} is "
                         f"{size} bytes; it must be 1..{P.MAX_NAME}, {rule}")
    if not pattern.fullmatch(name):
        raise ValueError(f"{what} {name!r} is not valid: it must be {rule}")


def order_ref(order: str | int) -> str:
    """The history key of an order: ``1002`` and ``order:1002`` both give
    ``order:1002`` (the router links a reliable message to an order's history when its
    key, or its channel, is ``order:<id>``)."""
    text = str(order).strip()
    ref = text if text.startswith("order:") else f"order:{text}"
    return check_address(ref, "order")


@dataclass(frozen=True)
class Welcome:
    """The router accepted our HELLO and told its limits."""

    heartbeat_ms: int
    liveness: int
    max_payload: int


@dataclass(frozen=True)
class Reply:
    """A service's answer to a request (``code`` NONE when it was served)."""

    request_id: int
    code: ErrorCode
    payload: bytes


@dataclass(frozen=True)
class Request:
    """A request handed to a worker; answer it with its ``job_id``."""

    job_id: int
    service: str
    ttl_ms: int
    payload: bytes


Event = Union[Delivery, Receipt, RouterError, Welcome, Reply, Request]


def encode_payload(data: Payload, compress_above: int) -> tuple[bytes, int]:
    """Serialize ``data`` (dicts and lists as JSON via orjson) and lz4 it when large."""
    if isinstance(data, (dict, list)):
        raw = orjson.dumps(data)
    elif isinstance(data, str):
        raw = data.encode()
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    else:
        raise TypeError(f"payload must be bytes, str, dict or list, got {type(data).__name__}")
    if compress_above >= 0 and len(raw) > compress_above:
        return lz4.frame.compress(raw), Flag.LZ4
    return raw, 0


def decode_payload(payload: bytes, flags: int) -> bytes:
    """Undo encode_payload's compression."""
    return lz4.frame.decompress(payload) if flags & Flag.LZ4 else payload


def payload_json(delivery: Delivery) -> Any:
    """Parse a delivery's (already decompressed) payload as JSON."""
    return orjson.loads(delivery.payload)
