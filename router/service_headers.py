"""The service commands' headers (READY, REQUEST, REPLY; docs/PROTOCOL.md §3, Services):
each parsed into its fields, or refused with an ERROR text that says, in protocol
terms, what was wrong. The broker (router/broker.py) decides what the fields mean."""

from __future__ import annotations

from . import protocol as P
from .protocol import ErrorCode, Role

# Header layouts from router/protocol.py (offsets of docs/PROTOCOL.md §3, Services).
_READY_FIXED = P.READY_AT["READY_FIXED"]  # 7: prefix, credit u16, name length u8
_REQUEST_FIXED = P.REQUEST_AT["REQUEST_FIXED"]  # 17: prefix, id u64, ttl u32, length u8
_REPLY_SIZE = P.REPLY_AT["REPLY_FIXED"]  # 14: prefix, job id u64, status u16
#: REQUEST and REPLY both start with their id: a header this long has a readable one.
ID_AT = P.REQUEST_AT["REQUEST_ID"]
ID_END = P.REQUEST_AT["REQUEST_TTL"]
assert (ID_AT, ID_END) == (P.REPLY_AT["REPLY_ID"], P.REPLY_AT["REPLY_STATUS"])
#: Where the ERROR texts point a peer that sent a bad service command.
SPEC = "see docs/PROTOCOL.md §3, Services"


class Refusal(Exception):
    """A service command the broker refuses: the ERROR to send back."""

    def __init__(self, code: ErrorCode, text: str, msg_id: int = 0) -> None:
        super().__init__(text)
        self.code, self.text, self.msg_id = code, text, msg_id


def role_name(role: int) -> str:
    """A role number as the ERROR texts name it: "4 (WORKER)", or the bare number."""
    try:
        return f"{role} ({Role(role).name})"
    except ValueError:
        return str(role)


def _printable(raw: bytes) -> bool:
    return all(0x21 <= b <= 0x7E for b in raw)


def _service_name(command: str, raw: bytes, offset: int, msg_id: int = 0) -> str:
    if not _printable(raw):
        raise Refusal(ErrorCode.MALFORMED,
                      f"{command} service name at offset {offset} must be printable ASCII "
                      f"without spaces (0x21..0x7e), got {raw[:40]!r} ({SPEC})", msg_id)
    return raw.decode("ascii")


def parse_ready(header: bytes) -> tuple[int, str]:
    """(credit, service) of a READY header, or a Refusal saying what is wrong."""
    n = len(header)
    if n < _READY_FIXED:
        raise Refusal(ErrorCode.MALFORMED,
                      f"READY header is {n} bytes, needs at least {_READY_FIXED}: prefix "
                      f"({P.PREFIX.size}) + credit (u16) + service name length (u8) + the "
                      f"name ({SPEC})")
    credit, ln = P.READY.unpack_from(header, P.PREFIX.size)
    if ln == 0:
        raise Refusal(ErrorCode.MALFORMED,
                      f"READY names no service: its name length (offset "
                      f"{P.READY_AT['READY_NAME_LEN']}) is 0; give a 1..{P.MAX_NAME} byte "
                      f"service name ({SPEC})")
    if n != _READY_FIXED + ln:
        raise Refusal(ErrorCode.MALFORMED,
                      f"READY header is {n} bytes, but its service name length {ln} makes it "
                      f"{_READY_FIXED + ln}: prefix + credit + length + name, nothing after "
                      f"({SPEC})")
    return credit, _service_name("READY", header[_READY_FIXED:], _READY_FIXED)


def parse_request(header: bytes) -> tuple[int, int, str]:
    """(request id, ttl ms, service) of a REQUEST header, or a Refusal (carrying the
    request id when the header is long enough to hold one)."""
    n = len(header)
    rid = int.from_bytes(header[ID_AT:ID_END], "big") if n >= ID_END else 0
    if n < _REQUEST_FIXED:
        raise Refusal(ErrorCode.MALFORMED,
                      f"REQUEST header is {n} bytes, needs at least {_REQUEST_FIXED}: prefix "
                      f"({P.PREFIX.size}) + request id (u64) + TTL ms (u32) + service name "
                      f"length (u8) + the name ({SPEC})", rid)
    rid, ttl_ms, ln = P.REQUEST.unpack_from(header, P.PREFIX.size)
    if ln == 0:
        raise Refusal(ErrorCode.MALFORMED,
                      f"REQUEST names no service: its name length (offset "
                      f"{P.REQUEST_AT['REQUEST_NAME_LEN']}) is 0; give a 1..{P.MAX_NAME} "
                      f"byte service name ({SPEC})", rid)
    if n != _REQUEST_FIXED + ln:
        raise Refusal(ErrorCode.MALFORMED,
                      f"REQUEST header is {n} bytes, but its service name length {ln} makes it "
                      f"{_REQUEST_FIXED + ln}: prefix + id + TTL + length + name, nothing "
                      f"after ({SPEC})", rid)
    return rid, ttl_ms, _service_name("REQUEST", header[_REQUEST_FIXED:], _REQUEST_FIXED, rid)


def parse_reply(header: bytes) -> tuple[int, int]:
    """(job id, raw status) of a REPLY header, or a Refusal."""
    n = len(header)
    if n != _REPLY_SIZE:
        jid = int.from_bytes(header[ID_AT:ID_END], "big") if n >= ID_END else 0
        raise Refusal(ErrorCode.MALFORMED,
                      f"REPLY header is {n} bytes, must be {_REPLY_SIZE}: prefix "
                      f"({P.PREFIX.size}) + job id (u64) + status (u16); the answer goes in "
                      f"the second frame ({SPEC})", jid)
    return P.REPLY.unpack_from(header, P.PREFIX.size)
