"""The wire protocol, defined once.

Every number the protocol uses lives in this module: the signature and version byte,
command codes, flags, roles, message classes, receipt statuses and error codes, plus the
fixed header layouts as :mod:`struct` formats. ``setup.py`` generates the Cython include
``ext/protocol.pxi`` from the integer tables below, so the native core and the Python SDK
cannot drift; ``tests/test_protocol.py`` also checks the compiled core against this table.

``docs/PROTOCOL.md`` is the prose specification of the same protocol.

All integers on the wire are big-endian (network byte order). Strings are raw bytes
preceded by a one-byte length; lists by a two-byte count.
"""

from __future__ import annotations

import enum
import struct
from typing import Iterable, NamedTuple

SIGNATURE = 0xD5
VERSION = 1

#: Upper bound on any length-prefixed name on the wire (address, channel, kind, key).
MAX_NAME = 255
#: Highest cursor a HELLO or BIND may carry. Sequences start at 1 and never wrap: a
#: cursor above this is refused (BAD_CURSOR) rather than let numbering pass 2**64.
MAX_CURSOR = 1 << 62
#: Entries in one address or cursor list (its count is 16 bits). More addresses go in
#: further BIND/UNBIND/ACK messages: the SDK splits long lists itself (see chunks()).
MAX_LIST = 0xFFFF


class Command(enum.IntEnum):
    """Command byte, at offset 2 of every header frame."""

    HELLO = 0x01  #: peer -> router: role, name, addresses to bind with resume cursors
    BIND = 0x02  #: peer -> router: bind more addresses (gateways)
    UNBIND = 0x03  #: peer -> router: release addresses
    WELCOME = 0x04  #: router -> peer: HELLO accepted, with the router's limits
    SEND = 0x10  #: sender -> router: one message to an address or channel
    DELIVER = 0x11  #: router -> endpoint: one message for one bound address
    ACK = 0x12  #: endpoint -> router: cumulative acks, per address
    RECEIPT = 0x13  #: router -> sender: batched outcomes per message id
    JOIN = 0x20  #: sender -> router: add addresses to a channel
    LEAVE = 0x21  #: sender -> router: remove addresses (or the whole channel)
    HEARTBEAT = 0x30  #: either way: I am alive
    BYE = 0x31  #: peer -> router: I am leaving, unbind me
    ERROR = 0x3F  #: router -> peer: a request of yours was refused
    READY = 0x40  #: worker -> router: I serve this service, with this many in parallel
    REQUEST = 0x41  #: client -> router -> worker: one request for a service
    REPLY = 0x42  #: worker -> router -> client: the answer to one request
    PACK = 0x50  #: either way: several SENDs/ACKs (to the router) or DELIVERs (from it) in one frame


class Flag(enum.IntFlag):
    """Flag bits, at offset 3 of every header frame."""

    NONE = 0
    LZ4 = 0x01  #: payload is an LZ4 frame (SEND, copied to DELIVER)
    CHANNEL = 0x02  #: SEND target is a channel, not an address
    PACK = 0x04  #: HELLO: this peer reads PACK; WELCOME: this router reads PACK


class Role(enum.IntEnum):
    """What a peer is, declared in HELLO."""

    SENDER = 1  #: backend service that pushes messages
    ENDPOINT = 2  #: one party (a rider app): binds its own address(es)
    GATEWAY = 3  #: holds many parties' connections: binds thousands of addresses
    WORKER = 4  #: service worker (dispatch scoring)


class MsgClass(enum.IntEnum):
    """Message class: decides reliability, priority and conflation."""

    ORDER = 0  #: reliable, priority 0 (order.created, accepted, picked_up, delivered)
    DISPATCH = 1  #: reliable, priority 0 (dispatch.offer, dispatch.accepted)
    CHAT = 2  #: reliable, priority 1 (kept as a record)
    NOTICE = 3  #: best effort, priority 1, no receipts except refusals
    LOCATION = 4  #: best effort, priority 2, conflated per (key, recipient)


#: Classes that are journaled, sequenced, acked and receipted.
RELIABLE_CLASSES = frozenset({MsgClass.ORDER, MsgClass.DISPATCH, MsgClass.CHAT})


class Status(enum.IntEnum):
    """Receipt status: the outcome the router reports for one message id."""

    ACCEPTED = 1  #: the router holds the message and will deliver it
    DELIVERED = 2  #: every recipient acked it
    EXPIRED = 3  #: its TTL passed before every recipient acked it
    REFUSED = 4  #: not accepted; the receipt's code says why (retry later or fix)
    FAILED = 5  #: accepted, then given up on (the code says why)


class ErrorCode(enum.IntEnum):
    """Codes carried by ERROR commands and by REFUSED/FAILED receipts."""

    NONE = 0
    MALFORMED = 1  #: wrong frame count, truncated or oversized fields
    BAD_VERSION = 2  #: signature or version byte not understood
    UNKNOWN_COMMAND = 3  #: command byte not defined (or not valid from this peer)
    TOO_LARGE = 4  #: payload larger than the router's cap (see WELCOME)
    UNKNOWN_CHANNEL = 5  #: SEND to a channel that has no members
    BAD_ADDRESS = 6  #: empty or invalid address/channel name
    QUEUE_FULL = 7  #: the recipient's queue is at its bound; retry later
    NOT_READY = 8  #: command before HELLO
    BAD_CLASS = 9  #: message class not defined
    BAD_ROLE = 10  #: role not defined, or command not allowed for the role
    OVERLOADED = 11  #: the router is shedding load; retry later
    ADDRESS_LIMIT = 12  #: the router's address table is full
    EXPIRED = 13  #: TTL passed (reason of an EXPIRED receipt)
    PEER_GONE = 14  #: recipient unbound for good (reason of a FAILED receipt)
    RATE_LIMITED = 15  #: too many errors from this peer; further errors suppressed
    STORAGE_FAILED = 16  #: the journal could not make the message durable (disk full?)
    MAX_ATTEMPTS = 17  #: redelivered the maximum number of times without an ack
    NO_SERVICE = 18  #: no worker served the request's service before its TTL
    WORKER_FAILED = 19  #: the request's workers kept dying; given up after max attempts
    SENDER_QUOTA = 20  #: this sender's messages waiting in the router are at its quota
    ADDRESS_TAKEN = 21  #: to the old holder: another connection bound this address
    UNKNOWN_JOB = 22  #: REPLY for a job this worker does not hold (moved, answered, never given)
    SERVICE_LIMIT = 23  #: READY for a new service while the service table is full
    BAD_CURSOR = 24  #: a HELLO/BIND cursor above MAX_CURSOR: the router cannot honour it
    FORBIDDEN = 25  #: the connection's principal may not do this (credentials file)
    RATE_EXCEEDED = 26  #: the principal's messages/s or bytes/s budget is spent; retry soon
    REVOKED = 27  #: the connection's key was revoked: the router closes the connection


#: Common prefix of every header frame: signature, version, command, flags.
PREFIX = struct.Struct(">BBBB")
#: HELLO after the prefix: role, name length (then name, then cursor list).
HELLO = struct.Struct(">BB")
#: WELCOME after the prefix: heartbeat interval ms, liveness, max payload bytes.
WELCOME = struct.Struct(">IBI")
#: Layout version of the WELCOME extension this module writes (the byte after WELCOME).
WELCOME_EXT_VERSION = 1
#: WELCOME extension, layout 1, after PREFIX + WELCOME: layout version, then window,
#: retry_ms, retry_max_ms, max_attempts, dedup window ms, errors_per_second (all u32).
#: Later layouts only append fields, so a reader of layout 1 reads these and ignores the rest.
WELCOME_EXT = struct.Struct(">BIIIIII")
#: SEND after the prefix: msg id, ttl ms, class, target len, kind len, key len.
SEND = struct.Struct(">QIBBBB")
#: DELIVER after the prefix: seq, msg id, accepted_us, class, kind/from/channel/order/addr
#: lens.
DELIVER = struct.Struct(">QQQBBBBBB")
#: One RECEIPT entry: msg id, status, code.
RECEIPT_ENTRY = struct.Struct(">QBH")
#: ERROR after the prefix: code, related msg id (0 if none).
ERROR = struct.Struct(">HQ")
#: READY after the prefix: credit (requests in parallel), service name length.
READY = struct.Struct(">HB")
#: REQUEST after the prefix: request id, ttl ms, service name length.
REQUEST = struct.Struct(">QIB")
#: REPLY after the prefix: request id, status code (ErrorCode, 0 = ok).
REPLY = struct.Struct(">QH")
#: JOIN and LEAVE after the prefix: channel name length (then the name, then an address list).
JOIN = struct.Struct(">B")
#: PACK: after the prefix, entries until the frame ends, each the length of a command's
#: header frame, that header (its own prefix included), the length of its payload (0 for
#: a command without one), that payload.
PACK_HEADER_LEN = struct.Struct(">H")
PACK_PAYLOAD_LEN = struct.Struct(">I")
#: The most bytes a writer puts in one PACK frame (a larger message goes on its own);
#: a reader takes any PACK the socket lets through.
PACK_MAX = 1 << 16
#: A HEARTBEAT from a peer that asked for packs: after the prefix, how many PACK frames
#: it has read on this connection (a router from before it ignores the field).
HEARTBEAT = struct.Struct(">Q")
#: PACK frames the router keeps unread per connection: past it, that connection's
#: DELIVERs go one by one (bounded by the socket's high-water mark in messages) until
#: a HEARTBEAT reports reads. A packing client reports at least every PACK_REPORT.
PACK_WINDOW = 1024
PACK_REPORT = 256
#: The commands a PACK may carry, by direction.
PACKABLE_TO_ROUTER = frozenset({Command.SEND, Command.ACK})
PACKABLE_FROM_ROUTER = frozenset({Command.DELIVER})
#: Count of a list (ACK entries, RECEIPT entries, cursor and address lists).
COUNT = struct.Struct(">H")
#: Sequence number inside cursor and ACK entries.
SEQ = struct.Struct(">Q")
#: The length byte in front of every name (address, channel, kind, key, peer name).
NAME_LEN = struct.Struct(">B")


def field_offsets(prefix: str, base: int, layout: struct.Struct,
                  names: tuple[str, ...], end: str = "FIXED") -> dict[str, int]:
    """``{prefix + name: offset}`` of each field of ``layout`` (one format code per field)
    when it starts ``base`` bytes into its frame, plus ``prefix + end``: where the layout
    ends (by default ``FIXED``: where the variable part begins). The offsets the core
    reads are derived here, never retyped."""
    codes = layout.format.lstrip("<>!=@")
    assert len(codes) == len(names), (layout.format, names)
    out, off = {}, base
    for code, name in zip(codes, names):
        out[prefix + name] = off
        off += struct.calcsize(">" + code)
    out[prefix + end] = off
    return out


#: Byte offsets inside the common prefix; PREFIX_SIZE is where a command's fields begin.
PREFIX_AT = field_offsets("PREFIX_", 0, PREFIX, ("SIGNATURE", "VERSION", "COMMAND", "FLAGS"),
                          end="SIZE")
#: Byte offsets inside a HELLO header frame: the peer name starts at HELLO_FIXED, its
#: cursor list right after the name.
HELLO_AT = field_offsets("HELLO_", PREFIX.size, HELLO, ("ROLE", "NAME_LEN"))
#: Where the list of BIND (cursors), UNBIND (addresses) and ACK (cursors) starts.
LIST_AT = {"BIND_LIST": PREFIX.size, "UNBIND_LIST": PREFIX.size, "ACK_LIST": PREFIX.size}
#: Byte offsets inside a JOIN or LEAVE header frame: the channel name starts at
#: JOIN_FIXED, its address list right after the name.
JOIN_AT = field_offsets("JOIN_", PREFIX.size, JOIN, ("CHANNEL_LEN",))
#: Sizes of the parts of a list: its count, a name's length byte, a cursor's sequence.
#: An address-list entry is NAME_HEAD + name; a cursor-list entry adds SEQ_SIZE.
LIST_SIZES = {"COUNT_SIZE": COUNT.size, "NAME_HEAD": NAME_LEN.size, "SEQ_SIZE": SEQ.size}
#: Byte offsets inside a WELCOME header frame: the fields every router sends, ending at
#: WELCOME_BASE (a WELCOME from before the extension), then the extension of layout
#: WELCOME_EXT_VERSION, ending at WELCOME_FIXED (the size of the WELCOME the core writes).
WELCOME_AT = field_offsets("WELCOME_", PREFIX.size, WELCOME,
                           ("HEARTBEAT", "LIVENESS", "MAX_PAYLOAD"), end="BASE")
WELCOME_AT.update(field_offsets("WELCOME_", WELCOME_AT["WELCOME_BASE"], WELCOME_EXT,
                                ("LAYOUT", "WINDOW", "RETRY", "RETRY_MAX", "MAX_ATTEMPTS",
                                 "DEDUP", "ERRORS_PER_SECOND")))
#: Byte offsets inside a SEND header frame (then target, kind, key).
SEND_AT = field_offsets("SEND_", PREFIX.size, SEND,
                        ("ID", "TTL", "CLASS", "TARGET_LEN", "KIND_LEN", "KEY_LEN"))
#: Byte offsets inside a DELIVER header frame (then kind, sender, channel, order, address).
DELIVER_AT = field_offsets("DELIVER_", PREFIX.size, DELIVER,
                           ("SEQ", "ID", "ACCEPTED", "CLASS", "KIND_LEN", "SENDER_LEN",
                            "CHANNEL_LEN", "ORDER_LEN", "ADDRESS_LEN"))
#: The longest DELIVER header frame: the fixed part and five names of MAX_NAME bytes.
DELIVER_MAX = DELIVER_AT["DELIVER_FIXED"] + 5 * MAX_NAME
#: Byte offsets inside one RECEIPT entry.
RECEIPT_AT = field_offsets("RECEIPT_", 0, RECEIPT_ENTRY, ("ID", "STATUS", "CODE"))
#: A RECEIPT frame: the prefix, a count (RECEIPT_COUNT), then from RECEIPT_HEAD entries
#: of RECEIPT_ENTRY.size bytes.
RECEIPT_FRAME_AT = field_offsets("RECEIPT_", PREFIX.size, COUNT, ("COUNT",), end="HEAD")
RECEIPT_HEAD = RECEIPT_FRAME_AT["RECEIPT_HEAD"]
#: Byte offsets inside a peer's HEARTBEAT that reports the packs it read.
HEARTBEAT_AT = field_offsets("HEARTBEAT_", PREFIX.size, HEARTBEAT, ("PACKS_READ",))
#: Byte offsets inside an ERROR header frame; ERROR_FIXED is its size.
ERROR_AT = field_offsets("ERROR_", PREFIX.size, ERROR, ("CODE", "ID"))
#: Byte offsets inside READY, REQUEST and REPLY header frames (the service name of
#: READY and REQUEST starts at READY_FIXED / REQUEST_FIXED; REPLY_FIXED is its size).
READY_AT = field_offsets("READY_", PREFIX.size, READY, ("CREDIT", "NAME_LEN"))
REQUEST_AT = field_offsets("REQUEST_", PREFIX.size, REQUEST, ("ID", "TTL", "NAME_LEN"))
REPLY_AT = field_offsets("REPLY_", PREFIX.size, REPLY, ("ID", "STATUS"))
#: Fixed sizes of the ERROR and WELCOME header frames the core writes.
ERROR_FIXED = ERROR_AT["ERROR_FIXED"]
WELCOME_FIXED = WELCOME_AT["WELCOME_FIXED"]
assert WELCOME_FIXED == PREFIX.size + WELCOME.size + WELCOME_EXT.size


class Record(enum.IntEnum):
    """Journal record kinds (the first body byte; layouts below, written and read by
    ext/journal.pxi and ext/durable.pxi; docs/PROTOCOL.md §10, "Journal record")."""

    MSG = 1  #: a reliable message for one address, with its seq
    ACK = 2  #: cumulative ack of an address
    CURSOR = 3  #: an address's numbering, at the head of a segment
    FIN = 4  #: a message's final receipt (for dedup after a restart)
    FLOOR = 5  #: numbering floor of new addresses: above every reclaimed one's (checkpoint)


#: Journal record header: body length u32, CRC-32C (Castagnoli) u32 of the body; the
#: body follows at REC_HEAD. (REC_LEN and REC_CRC are offsets; REC_MSG.. are kinds.)
RECORD = struct.Struct(">II")
RECORD_AT = field_offsets("REC_", 0, RECORD, ("LEN", "CRC"), end="HEAD")
RECORD_HEAD = RECORD_AT["REC_HEAD"]
#: A record body starts with its kind (a Record); the kind's fields follow at JREC_FIELDS.
RECORD_KIND = struct.Struct(">B")
RECORD_KIND_AT = field_offsets("JREC_", 0, RECORD_KIND, ("KIND",), end="FIELDS")
#: A MSG record's body after its kind byte: seq, msg id, accepted_us, expire_wall_us,
#: class, flags (then names address, sender, kind, channel, order; the payload is the rest).
JOURNAL_MSG = struct.Struct(">QQQQBB")
JOURNAL_MSG_AT = field_offsets("JMSG_", 0, JOURNAL_MSG,
                               ("SEQ", "ID", "ACCEPTED", "EXPIRE", "CLASS", "FLAGS"))
#: An ACK record's body after its kind byte: the cumulative seq (then the address name).
JOURNAL_ACK = struct.Struct(">Q")
JOURNAL_ACK_AT = field_offsets("JACK_", 0, JOURNAL_ACK, ("SEQ",))
#: A CURSOR record's body after its kind byte: next seq, acked (then the address name).
JOURNAL_CURSOR = struct.Struct(">QQ")
JOURNAL_CURSOR_AT = field_offsets("JCURSOR_", 0, JOURNAL_CURSOR, ("NEXT_SEQ", "ACKED"))
#: A FIN record's body after its kind byte: msg id, status, code (then the sender name).
JOURNAL_FIN = struct.Struct(">QBH")
JOURNAL_FIN_AT = field_offsets("JFIN_", 0, JOURNAL_FIN, ("ID", "STATUS", "CODE"))
#: A FLOOR record's body after its kind byte: the numbering floor (nothing follows).
JOURNAL_FLOOR = struct.Struct(">Q")
JOURNAL_FLOOR_AT = field_offsets("JFLOOR_", 0, JOURNAL_FLOOR, ("SEQ",))


class HistoryEvent(enum.IntEnum):
    """Kinds of order-history events the core writes (router/history.py reads them)."""

    ACCEPTED = 1  #: journaled and acknowledged to the sender (carries the payload)
    SENT = 2  #: delivered to the recipient's connection
    ACKED = 3  #: acknowledged by the recipient
    FINAL = 4  #: final outcome (DELIVERED, EXPIRED, FAILED)


#: History event head: kind u8, ts_us u64, msg id u64, seq u64, status u8, code u16,
#: class u8 (then names order, sender, address, kind, channel; u32 payload length).
HISTORY_EVENT = struct.Struct(">BQQQBHB")
HISTORY_AT = field_offsets("HIST_", 0, HISTORY_EVENT,
                           ("KIND", "TS", "ID", "SEQ", "STATUS", "CODE", "CLASS"))
#: Names after the head, each NAME_LEN + bytes: order, sender, address, kind, channel.
HISTORY_NAMES = 5
#: After the names: the payload's length (0 but for ACCEPTED), then the payload.
HISTORY_PAYLOAD_LEN = struct.Struct(">I")


class ProtocolError(ValueError):
    """A frame does not follow docs/PROTOCOL.md; ``code`` is the ErrorCode to report."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


class Delivery(NamedTuple):
    """A decoded DELIVER: one message for one of this peer's addresses."""

    address: str
    seq: int
    msg_id: int
    accepted_us: int
    msg_class: MsgClass
    kind: str
    sender: str
    channel: str
    flags: Flag
    payload: bytes
    #: The order this message belongs to (``order:<id>``, "" if none): its key when that
    #: is an order reference, or the ``order:<id>`` channel it was sent to.
    order: str = ""


class Tunables(NamedTuple):
    """The router's client-facing settings, from the WELCOME extension (layout 1)."""

    window: int  #: reliable deliveries in flight (sent, not acked) per address
    retry_ms: int  #: first redelivery of an unacked window after this many ms
    retry_max_ms: int  #: the redelivery interval doubles up to this many ms
    max_attempts: int  #: redeliveries without an ack before FAILED (0: until the TTL)
    dedup_ms: int  #: a repeated (sender name, message id) within this window is not redelivered
    errors_per_second: int  #: ERRORs sent per peer per second at most
    layout: int = WELCOME_EXT_VERSION  #: the extension's layout version as received


class WelcomeInfo(NamedTuple):
    """A decoded WELCOME; ``tunables`` is None from a router without the extension."""

    heartbeat_ms: int
    liveness: int
    max_payload: int
    tunables: Tunables | None = None


class Receipt(NamedTuple):
    """A decoded RECEIPT entry."""

    msg_id: int
    status: Status
    code: ErrorCode


def prefix(command: Command, flags: int = 0) -> bytes:
    """Return the 4-byte common prefix for ``command``."""
    return PREFIX.pack(SIGNATURE, VERSION, command, flags)


def _name(value: str | bytes, what: str) -> bytes:
    raw = value.encode() if isinstance(value, str) else bytes(value)
    if not raw or len(raw) > MAX_NAME:
        raise ValueError(f"{what} must be 1..{MAX_NAME} bytes, got {len(raw)}: {raw[:40]!r}")
    return raw


def _short(value: str | bytes, what: str) -> bytes:
    raw = value.encode() if isinstance(value, str) else bytes(value)
    if len(raw) > MAX_NAME:
        raise ValueError(f"{what} must be at most {MAX_NAME} bytes, got {len(raw)}")
    return raw


def chunks(items: Iterable, size: int = MAX_LIST) -> list[list]:
    """``items`` in lists of at most ``size`` (one list, maybe empty, if it is short)."""
    items = list(items)
    return [items[i:i + size] for i in range(0, len(items), size)] or [[]]


def _check_list(n: int) -> None:
    if n > MAX_LIST:
        raise ValueError(f"one message lists at most {MAX_LIST:,} addresses, got {n:,}: "
                         "split the list over several messages (protocol.chunks)")


def encode_cursors(cursors: Iterable[tuple[str, int]]) -> bytes:
    """Encode a cursor list: count, then (address, last sequence held) entries."""
    items = list(cursors)
    _check_list(len(items))
    out = bytearray(COUNT.pack(len(items)))
    for address, seq in items:
        raw = _name(address, "address")
        out += bytes((len(raw),)) + raw + SEQ.pack(seq)
    return bytes(out)


def encode_addresses(addresses: Iterable[str]) -> bytes:
    """Encode an address list: count, then length-prefixed names."""
    items = [_name(a, "address") for a in addresses]
    _check_list(len(items))
    out = bytearray(COUNT.pack(len(items)))
    for raw in items:
        out += bytes((len(raw),)) + raw
    return bytes(out)


def encode_hello(role: Role, name: str, cursors: Iterable[tuple[str, int]] = (),
                 flags: int = 0) -> bytes:
    """Encode a HELLO header frame (``flags``: Flag.PACK asks for packed DELIVERs)."""
    raw = _name(name, "peer name")
    return (prefix(Command.HELLO, flags) + HELLO.pack(role, len(raw)) + raw
            + encode_cursors(cursors))


def encode_bind(cursors: Iterable[tuple[str, int]]) -> bytes:
    """Encode a BIND header frame (more addresses for an existing peer)."""
    return prefix(Command.BIND) + encode_cursors(cursors)


def encode_unbind(addresses: Iterable[str]) -> bytes:
    """Encode an UNBIND header frame."""
    return prefix(Command.UNBIND) + encode_addresses(addresses)


def encode_send(
    target: str,
    msg_id: int,
    msg_class: MsgClass,
    kind: str = "",
    key: str = "",
    ttl_ms: int = 0,
    flags: int = 0,
) -> bytes:
    """Encode a SEND header frame; the payload travels as the next frame."""
    t, k, c = _name(target, "target"), _short(kind, "kind"), _short(key, "key")
    fixed = SEND.pack(msg_id, ttl_ms, msg_class, len(t), len(k), len(c))
    return prefix(Command.SEND, flags) + fixed + t + k + c


def encode_heartbeat(packs_read: int | None = None) -> bytes:
    """A HEARTBEAT; from a peer that reads packs, with how many it has read."""
    return prefix(Command.HEARTBEAT) + (b"" if packs_read is None
                                         else HEARTBEAT.pack(packs_read))


def encode_ack(acks: Iterable[tuple[str, int]]) -> bytes:
    """Encode an ACK frame: for each address, everything up to ``seq`` is acked."""
    return prefix(Command.ACK) + encode_cursors(acks)


def encode_join(channel: str, addresses: Iterable[str], leave: bool = False) -> bytes:
    """Encode a JOIN (or LEAVE) frame for ``channel``."""
    raw = _name(channel, "channel")
    cmd = Command.LEAVE if leave else Command.JOIN
    return prefix(cmd) + bytes((len(raw),)) + raw + encode_addresses(addresses)


def encode_ready(service: str, credit: int = 1) -> bytes:
    """Encode a READY: this worker serves ``service``, ``credit`` requests at a time."""
    raw = _name(service, "service")
    return prefix(Command.READY) + READY.pack(credit, len(raw)) + raw


def encode_request(service: str, request_id: int, ttl_ms: int = 0) -> bytes:
    """Encode a REQUEST header; the request payload is the next frame."""
    raw = _name(service, "service")
    return prefix(Command.REQUEST) + REQUEST.pack(request_id, ttl_ms, len(raw)) + raw


def encode_reply(request_id: int, code: int = 0) -> bytes:
    """Encode a REPLY header; the reply payload is the next frame."""
    return prefix(Command.REPLY) + REPLY.pack(request_id, code)


def decode_request(header: bytes) -> tuple[int, int, str]:
    """(request id, ttl ms, service) of a REQUEST header."""
    rid, ttl, ln = REQUEST.unpack_from(header, PREFIX.size)
    end = PREFIX.size + REQUEST.size + ln
    if ln == 0 or len(header) != end:
        raise ProtocolError(ErrorCode.MALFORMED, "REQUEST header length does not match")
    return rid, ttl, header[PREFIX.size + REQUEST.size:end].decode()


def decode_reply(header: bytes) -> tuple[int, ErrorCode]:
    """(request id, status) of a REPLY header."""
    if len(header) != REPLY_AT["REPLY_FIXED"]:
        raise ProtocolError(ErrorCode.MALFORMED,
                            f"REPLY header is {REPLY_AT['REPLY_FIXED']} bytes")
    rid, code = REPLY.unpack_from(header, PREFIX.size)
    try:
        return rid, ErrorCode(code)
    except ValueError:
        return rid, ErrorCode.MALFORMED


def check_prefix(frame: bytes) -> tuple[Command, Flag]:
    """Validate the common prefix and return (command, flags)."""
    if len(frame) < PREFIX.size:
        raise ProtocolError(ErrorCode.MALFORMED, f"header frame of {len(frame)} bytes")
    sig, ver, cmd, flags = PREFIX.unpack_from(frame)
    if sig != SIGNATURE or ver != VERSION:
        raise ProtocolError(ErrorCode.BAD_VERSION, f"signature {sig:#x} version {ver}")
    try:
        return Command(cmd), Flag(flags)
    except ValueError:
        raise ProtocolError(ErrorCode.UNKNOWN_COMMAND, f"command {cmd:#x}") from None


def encode_pack(entries: Iterable[tuple[bytes, bytes]]) -> bytes:
    """One PACK frame carrying ``entries``, each (header frame, payload frame or b"")."""
    out = [prefix(Command.PACK)]
    for header, payload in entries:
        if len(header) > 0xFFFF:
            raise ValueError(f"a packed header is at most 65,535 bytes, got {len(header)}")
        out += (PACK_HEADER_LEN.pack(len(header)), header,
                PACK_PAYLOAD_LEN.pack(len(payload)), payload)
    return b"".join(out)


def decode_pack(frame: bytes) -> list[tuple[bytes, bytes]]:
    """The (header, payload) entries of a PACK frame, in order; MALFORMED when the
    entries do not end exactly at the end of the frame."""
    check_prefix(frame)
    out, off, n = [], PREFIX.size, len(frame)
    while off < n:
        if off + PACK_HEADER_LEN.size > n:
            raise ProtocolError(ErrorCode.MALFORMED, f"PACK entry cut at byte {off}")
        (hn,) = PACK_HEADER_LEN.unpack_from(frame, off)
        off += PACK_HEADER_LEN.size
        if off + hn + PACK_PAYLOAD_LEN.size > n:
            raise ProtocolError(ErrorCode.MALFORMED, f"PACK header of {hn} bytes cut")
        header = frame[off:off + hn]
        (pn,) = PACK_PAYLOAD_LEN.unpack_from(frame, off + hn)
        off += hn + PACK_PAYLOAD_LEN.size
        if off + pn > n:
            raise ProtocolError(ErrorCode.MALFORMED, f"PACK payload of {pn} bytes cut")
        out.append((header, frame[off:off + pn]))
        off += pn
    return out


def decode_deliver(header: bytes, payload: bytes) -> Delivery:
    """Decode a DELIVER header frame and its payload frame."""
    _, flags = check_prefix(header)
    off = PREFIX.size
    seq, msg_id, acc, cls, lk, lf, lc, lo, la = DELIVER.unpack_from(header, off)
    off += DELIVER.size
    end = off + lk + lf + lc + lo + la
    if end != len(header):
        raise ProtocolError(ErrorCode.MALFORMED, f"DELIVER header {len(header)} != {end}")
    names, at = [], off
    for n in (lk, lf, lc, lo, la):
        names.append(header[at:at + n].decode())
        at += n
    kind, sender, chan, order, addr = names
    return Delivery(addr, seq, msg_id, acc, MsgClass(cls), kind, sender, chan, flags, payload,
                    order)


def decode_receipts(header: bytes) -> list[Receipt]:
    """Decode a RECEIPT header frame into its entries."""
    off = PREFIX.size
    (count,) = COUNT.unpack_from(header, off)
    off += COUNT.size
    if len(header) != off + count * RECEIPT_ENTRY.size:
        raise ProtocolError(ErrorCode.MALFORMED, f"RECEIPT of {len(header)} bytes, {count} entries")
    out = []
    for i in range(count):
        mid, st, code = RECEIPT_ENTRY.unpack_from(header, off + i * RECEIPT_ENTRY.size)
        out.append(Receipt(mid, Status(st), ErrorCode(code)))
    return out


def decode_error(header: bytes, text: bytes) -> tuple[ErrorCode, int, str]:
    """Decode an ERROR: (code, related msg id, human message)."""
    code, mid = ERROR.unpack_from(header, PREFIX.size)
    try:
        ecode = ErrorCode(code)
    except ValueError:
        ecode = ErrorCode.NONE
    return ecode, mid, text.decode(errors="replace")


def encode_welcome(heartbeat_ms: int, liveness: int, max_payload: int,
                   tunables: Tunables | None = None) -> bytes:
    """Encode a WELCOME header (the router's; here for tests and other routers), with the
    extension of layout WELCOME_EXT_VERSION when ``tunables`` is given."""
    out = prefix(Command.WELCOME) + WELCOME.pack(heartbeat_ms, liveness, max_payload)
    if tunables is not None:
        t = tunables
        out += WELCOME_EXT.pack(WELCOME_EXT_VERSION, t.window, t.retry_ms, t.retry_max_ms,
                                t.max_attempts, t.dedup_ms, t.errors_per_second)
    return out


def decode_welcome(header: bytes) -> WelcomeInfo:
    """Decode a WELCOME: heartbeat ms, liveness, max payload bytes, and the tunables of the
    extension when the router sent one (None otherwise). Bytes after the fields of the
    layout this module knows are ignored: later layouts only append."""
    base = WELCOME_AT["WELCOME_BASE"]  # the extension starts here, with its layout byte
    if len(header) < base:
        raise ProtocolError(ErrorCode.MALFORMED,
                            f"WELCOME header is {len(header)} bytes, needs {base}")
    hb, live, cap = WELCOME.unpack_from(header, PREFIX.size)
    if len(header) == base:
        return WelcomeInfo(hb, live, cap)  # a router from before the extension
    layout = header[base]
    if layout == 0 or len(header) < base + WELCOME_EXT.size:
        raise ProtocolError(
            ErrorCode.MALFORMED,
            f"WELCOME extension of {len(header) - base} bytes with layout {layout}: layout "
            f"1 and later need at least {WELCOME_EXT.size} (see PROTOCOL.md, WELCOME)")
    _, *fields = WELCOME_EXT.unpack_from(header, base)
    return WelcomeInfo(hb, live, cap, Tunables(*fields, layout=layout))


def native_table() -> dict[str, int]:
    """Every integer constant, flattened, as the generated Cython include defines them."""
    table = {"SIGNATURE": SIGNATURE, "VERSION": VERSION, "MAX_NAME": MAX_NAME,
             "MAX_CURSOR": MAX_CURSOR,
             "WELCOME_EXT_VERSION": WELCOME_EXT_VERSION}
    for group, prefix_ in (
        (Command, "CMD_"), (Flag, "FLAG_"), (Role, "ROLE_"), (MsgClass, "CLASS_"),
        (Status, "ST_"), (ErrorCode, "E_"), (Record, "REC_"), (HistoryEvent, "H_"),
    ):
        for member in group:
            table[prefix_ + member.name] = int(member)
    for layout in (PREFIX_AT, HELLO_AT, LIST_AT, JOIN_AT, LIST_SIZES, WELCOME_AT, SEND_AT,
                   DELIVER_AT, RECEIPT_AT, RECEIPT_FRAME_AT, ERROR_AT, READY_AT, REQUEST_AT,
                   HEARTBEAT_AT,
                   REPLY_AT, RECORD_AT, RECORD_KIND_AT, JOURNAL_MSG_AT, JOURNAL_ACK_AT,
                   JOURNAL_CURSOR_AT, JOURNAL_FIN_AT, JOURNAL_FLOOR_AT, HISTORY_AT):
        assert not table.keys() & layout.keys(), table.keys() & layout.keys()
        table.update(layout)
    table.update(PACK_HEADER_LEN_SIZE=PACK_HEADER_LEN.size,
                 PACK_PAYLOAD_LEN_SIZE=PACK_PAYLOAD_LEN.size,
                 PACK_ENTRY_SIZE=PACK_HEADER_LEN.size + PACK_PAYLOAD_LEN.size, PACK_MAX=PACK_MAX,
                 PACK_WINDOW=PACK_WINDOW, PACK_REPORT=PACK_REPORT)
    table.update(DELIVER_MAX=DELIVER_MAX, RECEIPT_ENTRY_SIZE=RECEIPT_ENTRY.size,
                 HIST_NAMES=HISTORY_NAMES, HIST_PAYLOAD_HEAD=HISTORY_PAYLOAD_LEN.size)
    return table
