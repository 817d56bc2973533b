"""The wire protocol table: one set of numbers in Python, the core and the docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from router import core
from router import protocol as P

DOC = (Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md").read_text()


def test_compiled_core_uses_the_python_table():
    assert core.constants() == P.native_table()


SECTIONS = {P.Command: "## 3.", P.Flag: "## 4.", P.Role: "## 5.", P.MsgClass: "## 6.",
            P.Status: "## 7.", P.ErrorCode: "## 8."}


@pytest.mark.parametrize("group", list(SECTIONS), ids=lambda g: g.__name__)
def test_every_code_is_documented(group):
    section = DOC.split(SECTIONS[group], 1)[1].split("\n## ", 1)[0]
    for member in group:
        if member.name == "NONE" and group is P.Flag:
            continue
        row = re.search(rf"^\|\s*`?{member.name}`?\s*\|\s*(0x[0-9A-Fa-f]+|\d+)\s*\|", section, re.M)
        assert row, f"{group.__name__}.{member.name} missing from docs/PROTOCOL.md"
        assert int(row.group(1), 0) == member, f"{member.name} has another value in the doc"


def test_send_round_trip_layout():
    frame = P.encode_send("merchant:881", 42, P.MsgClass.ORDER, kind="order.created",
                          ttl_ms=60000, flags=P.Flag.LZ4)
    assert frame[:4] == bytes((0xD5, 1, 0x10, 0x01))
    mid, ttl, cls, lt, lk, lkey = P.SEND.unpack_from(frame, 4)
    assert (mid, ttl, cls, lt, lk, lkey) == (42, 60000, 0, 12, 13, 0)
    assert frame[20:] == b"merchant:881order.created"


def test_deliver_decode():
    fixed = P.DELIVER.pack(3, 42, 1_700_000_000_000_000, P.MsgClass.CHAT, 4, 6, 7, 6)
    header = P.prefix(P.Command.DELIVER) + fixed + b"chat" + b"orders" + b"order:1" + b"user:7"
    d = P.decode_deliver(header, b"hi")
    assert (d.address, d.seq, d.msg_id, d.kind, d.sender, d.channel) == (
        "user:7", 3, 42, "chat", "orders", "order:1")
    with pytest.raises(P.ProtocolError):
        P.decode_deliver(header + b"x", b"hi")


def test_names_are_checked_before_they_reach_the_wire():
    with pytest.raises(ValueError, match="1..255"):
        P.encode_send("", 1, P.MsgClass.ORDER)
    with pytest.raises(ValueError, match="1..255"):
        P.encode_hello(P.Role.ENDPOINT, "x" * 256)


def test_check_prefix_errors():
    with pytest.raises(P.ProtocolError) as e:
        P.check_prefix(b"\xd5\x02\x10\x00")
    assert e.value.code == P.ErrorCode.BAD_VERSION
    with pytest.raises(P.ProtocolError) as e:
        P.check_prefix(b"\xd5\x01\x77\x00")
    assert e.value.code == P.ErrorCode.UNKNOWN_COMMAND


def test_lists_longer_than_one_message_holds_are_split():
    names = [f"user:{i}" for i in range(P.MAX_LIST + 10)]
    with pytest.raises(ValueError, match="at most 65,535 addresses"):
        P.encode_addresses(names)


def test_welcome_without_extension_decodes_with_no_tunables():
    # the 13-byte WELCOME of a router from before the extension (PROTOCOL.md §9 example)
    old = bytes.fromhex("d5010400" "000003e8" "03" "00100000")
    assert P.decode_welcome(old) == P.WelcomeInfo(1000, 3, 1 << 20, None)
    assert P.encode_welcome(1000, 3, 1 << 20) == old


def test_welcome_extension_layout_1_round_trip():
    t = P.Tunables(window=1024, retry_ms=1000, retry_max_ms=30000, max_attempts=20,
                   dedup_ms=120000, errors_per_second=20)
    frame = P.encode_welcome(500, 4, 65536, t)
    assert len(frame) == 13 + 25
    # byte for byte, as PROTOCOL.md's WELCOME table places them
    assert frame[13] == 1 and frame[14:18] == (1024).to_bytes(4, "big")
    assert frame[18:22] == (1000).to_bytes(4, "big") and frame[22:26] == (30000).to_bytes(4, "big")
    assert frame[26:30] == (20).to_bytes(4, "big") and frame[30:34] == (120000).to_bytes(4, "big")
    assert frame[34:38] == (20).to_bytes(4, "big")
    w = P.decode_welcome(frame)
    assert (w.heartbeat_ms, w.liveness, w.max_payload) == (500, 4, 65536)
    assert w.tunables == t
    # an old reader takes the first three fields and ignores the rest
    assert P.WELCOME.unpack_from(frame, 4) == (500, 4, 65536)


def test_welcome_extension_of_a_later_layout_keeps_the_known_fields():
    t = P.Tunables(8, 200, 800, 0, 0, 5)
    later = bytearray(P.encode_welcome(1000, 3, 1000, t) + b"\x00\x00\x00\x07")
    later[13] = 2  # a later layout appends fields; the layout-1 ones stay where they are
    w = P.decode_welcome(bytes(later))
    assert w.tunables == t._replace(layout=2)


@pytest.mark.parametrize("frame", [
    bytes.fromhex("d5010400" "000003e8" "03" "0010"),            # cut inside max payload
    bytes.fromhex("d5010400" "000003e8" "03" "00100000" "01" "0000"),  # cut extension
    bytes.fromhex("d5010400" "000003e8" "03" "00100000" "00") + bytes(24),  # layout 0
])
def test_bad_welcome_is_malformed_not_a_struct_error(frame):
    with pytest.raises(P.ProtocolError) as e:
        P.decode_welcome(frame)
    assert e.value.code == P.ErrorCode.MALFORMED and "WELCOME" in str(e.value)


def _examples() -> list[tuple[str, bytes]]:
    """(command, header bytes) of every frame in PROTOCOL.md §9, in order: hex bytes and
    quoted names as written, annotations in parentheses and second frames (+ ...) left out."""
    section = DOC.split("## 9.", 1)[1]
    blocks = re.findall(r"```\n(.*?)```", section, re.S)
    out: list[tuple[str, list[str]]] = []
    for block in blocks:
        for line in block.splitlines():
            body = re.sub(r"\([^)]*\)", "", line).split(" + ")[0]
            if not line.startswith(" "):
                name, body = body.split(None, 1)
                out.append((name, []))
            out[-1][1].extend(re.findall(r'"[^"]*"|\b[0-9a-f]{2}\b', body))
    frames = []
    for name, tokens in out:
        raw = b"".join(t[1:-1].encode() if t.startswith('"') else bytes.fromhex(t)
                       for t in tokens)
        frames.append((name, raw))
    return frames


def test_worked_examples_are_what_the_encoders_write():
    ex = _examples()
    assert [n for n, _ in ex] == ["HELLO", "WELCOME", "HELLO", "SEND", "RECEIPT", "DELIVER",
                                  "ACK", "RECEIPT", "RECEIPT", "JOIN", "SEND", "RECEIPT",
                                  "ERROR"]
    frames = [f for _, f in ex]
    cursor = 17
    assert frames[0] == P.encode_hello(P.Role.ENDPOINT, "merchant-881", [("merchant:881", cursor)])
    assert frames[1] == P.encode_welcome(1000, 3, 1 << 20, P.Tunables(
        window=1024, retry_ms=1000, retry_max_ms=30000, max_attempts=20, dedup_ms=120000,
        errors_per_second=20))
    assert frames[2] == P.encode_hello(P.Role.SENDER, "orders")
    mid = 0x1122334455667788
    assert frames[3] == P.encode_send("merchant:881", mid, P.MsgClass.ORDER,
                                      kind="order.created", ttl_ms=300_000)
    assert P.decode_receipts(frames[4]) == [P.Receipt(mid, P.Status.ACCEPTED, P.ErrorCode.NONE)]
    d = P.decode_deliver(frames[5], b"")
    # the delivery is the next sequence after the cursor the merchant presented
    assert (d.address, d.seq, d.msg_id, d.kind, d.sender, d.channel) == (
        "merchant:881", cursor + 1, mid, "order.created", "orders", "")
    assert frames[6] == P.encode_ack([("merchant:881", d.seq)])
    assert P.decode_receipts(frames[7]) == [P.Receipt(mid, P.Status.DELIVERED, P.ErrorCode.NONE)]
    assert P.decode_receipts(frames[8]) == [
        P.Receipt(mid, P.Status.ACCEPTED, P.ErrorCode.NONE),
        P.Receipt(mid + 1, P.Status.REFUSED, P.ErrorCode.QUEUE_FULL)]
    assert frames[9] == P.encode_join("order:1001", ["user:7", "merchant:881"])
    assert frames[10] == P.encode_send("order:1001", mid + 2, P.MsgClass.ORDER,
                                       kind="order.notes", flags=P.Flag.CHANNEL)
    assert P.decode_receipts(frames[11]) == [
        P.Receipt(mid + 2, P.Status.REFUSED, P.ErrorCode.TOO_LARGE)]
    assert P.decode_error(frames[12], b"")[:2] == (P.ErrorCode.TOO_LARGE, mid + 2)
