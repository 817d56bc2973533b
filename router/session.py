"""Client-side protocol state, free of I/O (shared by the blocking and asyncio SDKs).

A session turns API calls into frames and received frames into events; the SDK classes
in :mod:`router.client` and :mod:`router.aio` only move those frames over a DEALER
socket. Keeping the state here means both SDKs behave identically: the same payload
encoding, the same heartbeats, the same dedup of redelivered sequences, the same
re-HELLO after the router restarts.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Iterable, Union

import lz4.frame
import orjson

from . import protocol as P
from .protocol import Command, Delivery, ErrorCode, Flag, MsgClass, Receipt, Role

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


class Session:
    """State common to every client: HELLO, WELCOME, heartbeats, router errors."""

    def __init__(self, role: Role, name: str) -> None:
        self.role, self.name = role, name
        self.welcome: Welcome | None = None
        self.heartbeat_ms = 1000
        self.liveness = 3
        self.last_sent = 0.0
        self.last_heard = time.monotonic()
        self._resend_due = False
        self._hello_at = 0.0
        #: The connection to the router is up (as libzmq's monitor last said). While it
        #: is down nothing housekeeping is queued: HELLOs or heartbeats queued during an
        #: outage would all arrive at once when it comes back.
        self.link = True
        self._hello_since_down = False

    def hello(self) -> list[list[bytes]]:
        """Messages of the HELLO to (re)send: the HELLO, then a BIND for each further
        MAX_LIST addresses when there are more than one list holds."""
        self.welcome = None
        self._hello_at = time.monotonic()
        self._hello_since_down = True
        first, *rest = P.chunks(self.cursor_list())
        return [[P.encode_hello(self.role, self.name, first)]] + [
            [P.encode_bind(part)] for part in rest]

    def cursor_list(self) -> list[tuple[str, int]]:
        """Addresses to bind in HELLO with the last sequence held (none for a sender)."""
        return []

    def sent(self) -> None:
        """Record that frames went out now (heartbeats are only sent when idle)."""
        self.last_sent = time.monotonic()

    def link_down(self) -> None:
        """The connection went down (libzmq reconnects by itself)."""
        self.link = False
        self._hello_since_down = False

    def link_up(self) -> list[list[bytes]]:
        """The connection is up again: one HELLO for it, unless one was queued since it
        went down (that one goes out on this connection). The router sees a reconnect
        as a new connection, so this HELLO is what moves the addresses back."""
        self.link = True
        self.last_heard = time.monotonic()
        return [] if self._hello_since_down else self.hello()

    def _hello_pending(self, now: float) -> bool:
        """A HELLO went out on this connection recently and its WELCOME has not come."""
        return (self.welcome is None and self._hello_since_down
                and (now - self._hello_at) * 1000 < self.heartbeat_ms * self.liveness)

    def due(self) -> list[list[bytes]]:
        """Housekeeping frames to send now: a heartbeat when idle, HELLO when the router
        has been silent too long while the link is up (it restarted, dropped us, or our
        HELLO was lost): at most once per liveness period. Nothing while the link is
        down (link_up sends the HELLO)."""
        if not self.link:
            return []
        now = time.monotonic()
        silence = (now - self.last_heard) * 1000
        if silence > self.heartbeat_ms * (self.liveness + 1):
            self.last_heard = now
            return [] if self._hello_pending(now) else self.hello()
        if (now - self.last_sent) * 1000 >= self.heartbeat_ms / 2:
            return [[P.prefix(Command.HEARTBEAT)]]
        return []

    def handle(self, frames: list[bytes]) -> tuple[list[Event], list[list[bytes]]]:
        """Consume one received message: return (events, replies to send)."""
        self.last_heard = time.monotonic()
        try:
            command, _ = P.check_prefix(frames[0])
        except (P.ProtocolError, IndexError) as exc:
            return [RouterError(ErrorCode.MALFORMED, 0, f"unreadable frame from router: {exc}")], []
        if command == Command.WELCOME:
            hb, live, cap = P.decode_welcome(frames[0])[:3]
            self.welcome = Welcome(hb, live, cap)
            self.heartbeat_ms, self.liveness = hb, live
            return [self.welcome], []
        if command == Command.HEARTBEAT:
            return [], []
        if command == Command.ERROR:
            code, mid, text = P.decode_error(frames[0], frames[1] if len(frames) > 1 else b"")
            if code == ErrorCode.NOT_READY:
                # One HELLO answers a burst of NOT_READY (one per message that was in
                # flight when the connection changed): none while one is pending.
                if self._hello_pending(time.monotonic()):
                    return [], []
                return [], self.hello()
            return [RouterError(code, mid, text)], []
        return self.handle_command(command, frames)

    def handle_command(self, command: Command, frames: list[bytes]) -> tuple[list[Event], list[list[bytes]]]:
        """Commands specific to the client kind."""
        return [RouterError(ErrorCode.UNKNOWN_COMMAND, 0, f"unexpected {command.name}")], []


class SenderSession(Session):
    """A sender: SEND, JOIN/LEAVE, and the receipts that come back."""

    def __init__(self, name: str, compress_above: int = COMPRESS_ABOVE,
                 resend_after: float = 3.0) -> None:
        super().__init__(Role.SENDER, name)
        self.compress_above = compress_above
        #: Seconds without ACCEPTED before a reliable send goes again, same id.
        self.resend_after = resend_after
        # Sender-chosen ids: a random 32-bit prefix per session and a counter, so two
        # runs of one service do not reuse ids inside the router's dedup window.
        self._ids = itertools.count((int.from_bytes(os.urandom(4), "big") << 32) | 1)
        #: Reliable sends not yet ACCEPTED or refused: id -> (frames, last sent), in send
        #: order. Resent with the same id after NOT_READY or silence; the router's dedup
        #: makes a resend of something it already holds harmless.
        self.unconfirmed: dict[int, tuple[list[bytes], float]] = {}

    def send(
        self,
        target: str,
        data: Payload,
        *,
        kind: str = "",
        msg_class: MsgClass = MsgClass.ORDER,
        ttl_ms: int = 0,
        key: str = "",
        channel: bool = False,
        msg_id: int | None = None,
        order: str | int = "",
    ) -> tuple[int, list[bytes] | None]:
        """Build a SEND; return (msg_id, frames to send now). Frames are None while a
        re-HELLO is in progress: the message then goes out after the older unconfirmed
        ones, so per-address order survives a router restart.

        ``order`` (``1002`` or ``order:1002``) ties a reliable message to that order's
        history; it travels as the key, so give ``order`` or ``key``, not both."""
        msg_class = MsgClass(msg_class)
        if channel:
            check_channel(target)
        else:
            check_address(target, "target")
        if not 0 <= ttl_ms <= MAX_TTL_MS:
            raise ValueError(f"ttl_ms must be 0 (no TTL) .. {MAX_TTL_MS}, got {ttl_ms}")
        if order != "":
            if key:
                raise ValueError(f"give order= or key=, not both (got order={order!r}, "
                                 f"key={key!r}): the order travels as the key")
            key = order_ref(order)
        payload, flags = encode_payload(data, self.compress_above)
        if self.welcome and len(payload) > self.welcome.max_payload:
            raise ValueError(
                f"payload of {len(payload)} bytes is over the router's cap of "
                f"{self.welcome.max_payload}; split it or raise max_payload on the router")
        if channel:
            flags |= Flag.CHANNEL
        mid = next(self._ids) if msg_id is None else msg_id
        frames = [P.encode_send(target, mid, msg_class, kind, key, ttl_ms, flags), payload]
        if msg_class in P.RELIABLE_CLASSES:
            if self._resend_due:
                self.unconfirmed[mid] = (frames, 0.0)
                return mid, None
            self.unconfirmed[mid] = (frames, time.monotonic())
        return mid, frames

    def request(self, service: str, data: Payload, ttl_ms: int = 0) -> tuple[int, list[bytes]]:
        """Build a REQUEST for ``service``; return (request id, frames)."""
        payload, _ = encode_payload(data, -1)
        rid = next(self._ids)
        return rid, [P.encode_request(service, rid, ttl_ms), payload]

    def join(self, channel: str, addresses: Iterable[str], leave: bool = False) -> list[bytes]:
        """Frames of a JOIN (or LEAVE)."""
        names = [check_address(a) for a in addresses]
        return [P.encode_join(check_channel(channel), names, leave)]

    def hello(self) -> list[list[bytes]]:
        """As Session.hello; what the router never confirmed is resent after its WELCOME,
        in send order."""
        self._resend_due = True
        return super().hello()

    def due(self) -> list[list[bytes]]:
        """As Session.due, plus the resend of unconfirmed messages after a HELLO."""
        out = super().due()
        if not self._resend_due and self.unconfirmed:
            out.extend(self._resend(time.monotonic(), self.resend_after))
        return out

    def handle(self, frames: list[bytes]) -> tuple[list[Event], list[list[bytes]]]:
        """As Session.handle; the WELCOME that answers a HELLO starts the resend."""
        events, replies = super().handle(frames)
        if self._resend_due and self.welcome is not None:
            # WELCOME after a (re-)HELLO: everything unconfirmed goes again, in order,
            # before any new send (send() holds new ones until then).
            self._resend_due = False
            replies.extend(self._resend(time.monotonic(), 0.0))
        return events, replies

    def _resend(self, now: float, older_than: float) -> list[list[bytes]]:
        frames = []
        for mid, (f, sent) in self.unconfirmed.items():
            if now - sent >= older_than:
                frames.append(f)
                self.unconfirmed[mid] = (f, now)
        return frames

    def handle_command(self, command: Command, frames: list[bytes]) -> tuple[list[Event], list[list[bytes]]]:
        """Commands this kind of session understands; the rest go to the base."""
        if command == Command.REPLY and len(frames) == 2:
            rid, code = P.decode_reply(frames[0])
            return [Reply(rid, code, frames[1])], []
        if command != Command.RECEIPT:
            return super().handle_command(command, frames)
        receipts = P.decode_receipts(frames[0])
        for r in receipts:
            self.unconfirmed.pop(r.msg_id, None)
        return list(receipts), []


class EndpointSession(Session):
    """An endpoint or gateway: bound addresses, deliveries, cumulative acks."""

    def __init__(self, name: str, addresses: Iterable[str] = (), role: Role = Role.ENDPOINT,
                 cursors: dict[str, int] | None = None) -> None:
        super().__init__(role, name)
        #: Last sequence received per address: presented in HELLO, so a reconnect
        #: resumes after what this process already holds, and repeats are dropped.
        self.cursors: dict[str, int] = {check_address(a): 0 for a in addresses}
        self.cursors.update({check_address(a): seq for a, seq in (cursors or {}).items()})
        #: Last sequence the application acked per address: what to persist to resume
        #: after the process itself restarts.
        self.acked: dict[str, int] = dict(self.cursors)
        #: Addresses released with UNBIND: their cursors are kept for a later BIND.
        self.unbound: set[str] = set()
        self._acks: dict[str, int] = {}
        self.duplicates = 0

    def cursor_list(self) -> list[tuple[str, int]]:
        """Bound addresses with the last sequence held."""
        return [(a, seq) for a, seq in self.cursors.items() if a not in self.unbound]

    def bind(self, addresses: Iterable[str]) -> list[list[bytes]]:
        """Messages of the BINDs for more addresses (one per MAX_LIST of them)."""
        new = [(a, self.cursors.setdefault(a, 0)) for a in map(check_address, addresses)]
        for a, seq in new:
            self.acked.setdefault(a, seq)
            self.unbound.discard(a)
        return [[P.encode_bind(part)] for part in P.chunks(new)]

    def unbind(self, addresses: Iterable[str]) -> list[list[bytes]]:
        """Messages of the UNBINDs (one per MAX_LIST addresses)."""
        names = list(addresses)
        self.unbound.update(names)  # cursors stay: a later BIND resumes after them
        return [[P.encode_unbind(part)] for part in P.chunks(names)]

    def ack(self, delivery: Delivery) -> None:
        """Mark ``delivery`` (and everything before it on its address) as processed."""
        if delivery.seq and delivery.seq > self._acks.get(delivery.address, 0):
            self._acks[delivery.address] = delivery.seq
        if delivery.seq > self.acked.get(delivery.address, 0):
            self.acked[delivery.address] = delivery.seq

    def take_acks(self) -> list[list[bytes]]:
        """Messages of the cumulative ACK for everything marked since the last call
        (none if nothing was; one per MAX_LIST addresses)."""
        if not self._acks:
            return []
        out = [[P.encode_ack(part)] for part in P.chunks(self._acks.items())]
        self._acks.clear()
        return out

    def handle_command(self, command: Command, frames: list[bytes]) -> tuple[list[Event], list[list[bytes]]]:
        """Commands this kind of session understands; the rest go to the base."""
        if command == Command.REQUEST and len(frames) == 2 and self.role == Role.WORKER:
            job_id, ttl, service = P.decode_request(frames[0])
            return [Request(job_id, service, ttl, frames[1])], []
        if command != Command.DELIVER or len(frames) != 2:
            return super().handle_command(command, frames)
        d = P.decode_deliver(frames[0], frames[1])
        if d.seq:
            if d.seq <= self.cursors.get(d.address, 0):
                # A redelivery of something we already handed over: ack it again, drop it.
                self.duplicates += 1
                self._acks[d.address] = max(self._acks.get(d.address, 0), self.cursors[d.address])
                return [], []
            self.cursors[d.address] = d.seq
        return [d._replace(payload=decode_payload(d.payload, d.flags))], []
