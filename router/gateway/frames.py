"""The gateway's JSON frame protocol (docs/GATEWAY.md), defined once: frame types, their
fields, close codes, and the encoders the gateway uses.

Every frame is one WebSocket text message holding a JSON object with a ``type``.
"""

from __future__ import annotations

import enum
from typing import Any

import orjson

from router.protocol import Delivery, MsgClass, Status

#: Seconds an app has to send its ``hello`` after the WebSocket opens.
HELLO_TIMEOUT_S = 5.0
#: Largest frame an app may send, bytes (the router's payload cap is larger; apps send
#: small things: a confirm, a chat line, a position).
MAX_APP_FRAME = 64 * 1024


class Close(enum.IntEnum):
    """WebSocket close codes the gateway uses (4000-4999: application codes)."""

    NORMAL = 1000  #: the app said bye, or the gateway is shutting down (1001 then)
    GOING_AWAY = 1001  #: the gateway is stopping: reconnect (to another one) and resume
    BAD_FRAME = 4000  #: a frame that is not JSON, has no known type, or misses a field
    UNAUTHORIZED = 4001  #: no hello in time, or its token was refused (reason in the text)
    TAKEN_OVER = 4002  #: another connection (the party's other device) took the address
    TOO_SLOW = 4003  #: its reliable queue passed the bound: reconnect and resume
    RATE_LIMITED = 4004  #: it sent more than its budget of frames per second
    ROUTER_DOWN = 4005  #: the gateway lost the router: reconnect and resume later
    PING_TIMEOUT = 4006  #: no answer to the gateway's last ping: reconnect and resume


#: Frames an app sends: type -> required fields.
APP_FRAMES: dict[str, tuple[str, ...]] = {
    "hello": ("token",),  # optional: last_seq (resume after it)
    "ack": ("seq",),  # cumulative: everything up to seq was processed
    "send": ("id", "to", "kind", "data"),  # optional: class, channel, order
    "bye": (),
}

#: Frames the gateway sends: type -> fields.
GATEWAY_FRAMES: dict[str, tuple[str, ...]] = {
    "welcome": ("address", "resumed_after", "heartbeat_s"),
    "deliver": ("seq", "class", "kind", "from", "channel", "order", "data", "accepted_ms"),
    "receipt": ("id", "status", "code"),
    "error": ("code", "text"),
}


class FrameError(ValueError):
    """An app frame the gateway cannot take; the text says what was wrong."""


def parse_app_frame(raw: str | bytes) -> dict[str, Any]:
    """The frame as a dict with a known type and its required fields; else FrameError."""
    if len(raw) > MAX_APP_FRAME:
        raise FrameError(f"frame of {len(raw)} bytes: at most {MAX_APP_FRAME}")
    try:
        frame = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise FrameError("not JSON: every frame is a JSON object with a type") from None
    if not isinstance(frame, dict) or frame.get("type") not in APP_FRAMES:
        raise FrameError(f"unknown frame type {frame.get('type') if isinstance(frame, dict) else None!r}: "
                         f"one of {', '.join(APP_FRAMES)}")
    missing = [f for f in APP_FRAMES[frame["type"]] if f not in frame]
    if missing:
        raise FrameError(f"{frame['type']} frame lacks {', '.join(missing)}")
    return frame


def _data(payload: bytes) -> Any:
    """A payload as JSON when it is JSON, else as text."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload.decode(errors="replace")


def deliver(d: Delivery) -> bytes:
    """A ``deliver`` frame for one delivery (``seq`` 0: best effort, nothing to ack)."""
    return orjson.dumps({"type": "deliver", "seq": d.seq, "class": MsgClass(d.msg_class).name,
                         "kind": d.kind, "from": d.sender, "channel": d.channel,
                         "order": d.order, "data": _data(d.payload),
                         "accepted_ms": d.accepted_us // 1000})


def welcome(address: str, resumed_after: int, heartbeat_s: float) -> bytes:
    """The answer to a good ``hello``."""
    return orjson.dumps({"type": "welcome", "address": address,
                         "resumed_after": resumed_after, "heartbeat_s": heartbeat_s})


def receipt(app_id: Any, status: Status, code: str) -> bytes:
    """The router's verdict on one of the app's sends."""
    return orjson.dumps({"type": "receipt", "id": app_id, "status": Status(status).name,
                         "code": code})


def error(code: str, text: str) -> bytes:
    """A refusal of one frame; the connection stays open."""
    return orjson.dumps({"type": "error", "code": code, "text": text})
