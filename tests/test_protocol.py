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
            P.Status: "## 7.", P.ErrorCode: "## 8.", P.Record: "### Journal record",
            P.HistoryEvent: "### History event"}


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
    fixed = P.DELIVER.pack(3, 42, 1_700_000_000_000_000, P.MsgClass.CHAT, 4, 6, 7, 7, 6)
    header = (P.prefix(P.Command.DELIVER) + fixed + b"chat" + b"orders" + b"order:1"
              + b"order:1" + b"user:7")
    d = P.decode_deliver(header, b"hi")
    assert (d.address, d.seq, d.msg_id, d.kind, d.sender, d.channel, d.order) == (
        "user:7", 3, 42, "chat", "orders", "order:1", "order:1")
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
                                  "ERROR", "HELLO", "PACK", "HEARTBEAT"]
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
    assert (d.address, d.seq, d.msg_id, d.kind, d.sender, d.channel, d.order) == (
        "merchant:881", cursor + 1, mid, "order.created", "orders", "", "")
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
    assert frames[13] == P.encode_hello(P.Role.ENDPOINT, "rider-42", [("rider:42", 0)],
                                        flags=P.Flag.PACK)
    offers = [(P.encode_send("rider:42", i, P.MsgClass.DISPATCH, kind="offer"), b"{}")
              for i in (1, 2)]
    assert frames[14] == P.encode_pack(offers)
    assert P.decode_pack(frames[14]) == offers
    assert frames[15] == P.encode_heartbeat(packs_read=1)


# ---- layouts: the table, the compiled core, the document and the journal agree ---------

def _rows(at: dict) -> list[tuple[int, int]]:
    """(offset, size) of each field of a field_offsets() table, in order (an entry's size
    runs to the next entry; the last entry is where the layout ends)."""
    items = list(at.values())
    return [(off, nxt - off) for off, nxt in zip(items, items[1:]) if nxt > off]


def _doc_table(heading: str, nth: int = 0) -> list[tuple[int, int | None]]:
    """(offset, size) rows of the nth offset table under ``heading`` in PROTOCOL.md, for
    rows whose offset is a number; size None when it is variable (*n*, 11 × *n*, …)."""
    section = DOC.split(heading, 1)[1].split("\n### ", 1)[0]
    tables = re.findall(r"^\| offset \| size \| field \|.*\n\|[-|]+\|\n((?:\|.*\n)+)", section, re.M)
    rows = []
    for line in tables[nth].splitlines():
        offset, size = (c.strip() for c in line.strip("|").split("|")[:2])
        if offset.isdigit():
            rows.append((int(offset), int(size) if size.isdigit() else None))
    return rows


def _var(at: dict, end: str) -> list[tuple[int, None]]:
    """The row where a layout's variable part (a name, a list) begins."""
    return [(at[end], None)]


DOC_TABLES = {
    ("### HELLO", 0): [(0, P.PREFIX.size)] + _rows(P.HELLO_AT) + _var(P.HELLO_AT, "HELLO_FIXED"),
    ("### WELCOME", 0): _rows(P.WELCOME_AT),
    ("### SEND", 0): _rows(P.SEND_AT) + _var(P.SEND_AT, "SEND_FIXED"),
    ("### DELIVER", 0): [(P.PREFIX_AT["PREFIX_FLAGS"], 1)] + _rows(P.DELIVER_AT)
    + _var(P.DELIVER_AT, "DELIVER_FIXED"),
    ("### RECEIPT", 0): _rows(P.RECEIPT_FRAME_AT) + _var(P.RECEIPT_FRAME_AT, "RECEIPT_HEAD"),
    ("### ERROR", 0): _rows(P.ERROR_AT),
    ("### HEARTBEAT", 0): _rows(P.HEARTBEAT_AT),
    ("### Services", 0): _rows(P.READY_AT) + _var(P.READY_AT, "READY_FIXED"),
    ("### Services", 1): _rows(P.REQUEST_AT) + _var(P.REQUEST_AT, "REQUEST_FIXED"),
    ("### Services", 2): _rows(P.REPLY_AT),
    ("### Journal record", 0): _rows(P.RECORD_AT) + _var(P.RECORD_AT, "REC_HEAD"),
    # the MSG body by offset from its kind byte: the kind, then JOURNAL_MSG's fields
    ("### Journal record", 1): _rows(P.RECORD_KIND_AT)
    + [(P.RECORD_KIND.size + off, size) for off, size in _rows(P.JOURNAL_MSG_AT)]
    + [(P.RECORD_KIND.size + P.JOURNAL_MSG.size, None)],
    ("### History event", 0): _rows(P.HISTORY_AT) + _var(P.HISTORY_AT, "HIST_FIXED"),
}


@pytest.mark.parametrize("where", list(DOC_TABLES), ids=lambda w: f"{w[0][4:]}-{w[1]}")
def test_document_layout_tables_match_the_offsets_the_core_uses(where):
    assert _doc_table(*where) == DOC_TABLES[where]


def test_document_gives_the_pack_entry_layout_and_limits():
    pack = DOC.split("### PACK", 1)[1].split("\n### ", 1)[0]
    assert f"| {P.PACK_HEADER_LEN.size} | header length *h* |" in pack
    assert f"| {P.PACK_PAYLOAD_LEN.size} | payload length *p*" in pack
    for name, value in (("PACK_MAX", P.PACK_MAX), ("PACK_WINDOW", P.PACK_WINDOW),
                        ("PACK_REPORT", P.PACK_REPORT)):
        assert f"`{name}` = {value:,}" in pack, name


def test_document_names_the_receipt_entry_size_and_common_prefix():
    receipt = DOC.split("### RECEIPT", 1)[1].split("\n### ", 1)[0]
    assert f"| {P.RECEIPT_ENTRY.size} × *n* |" in receipt
    prefix = _doc_table("### Common prefix")
    assert prefix == _rows(P.PREFIX_AT)


def test_the_new_layout_names_reach_the_compiled_core():
    # core.constants() == native_table() (above) covers the values; these are the names
    # ext/ reads, spelled as ext/ spells them.
    c = core.constants()
    for name in ("PREFIX_COMMAND", "PREFIX_FLAGS", "PREFIX_SIZE", "HELLO_ROLE", "HELLO_NAME_LEN",
                 "HELLO_FIXED", "BIND_LIST", "UNBIND_LIST", "ACK_LIST", "JOIN_CHANNEL_LEN",
                 "JOIN_FIXED", "COUNT_SIZE", "NAME_HEAD", "SEQ_SIZE", "WELCOME_LAYOUT",
                 "WELCOME_ERRORS_PER_SECOND", "WELCOME_FIXED", "ERROR_CODE", "ERROR_ID",
                 "ERROR_FIXED", "RECEIPT_COUNT", "RECEIPT_HEAD", "DELIVER_MAX", "REC_LEN",
                 "REC_CRC", "REC_HEAD", "JREC_KIND", "JREC_FIELDS", "JACK_SEQ", "JACK_FIXED",
                 "JCURSOR_NEXT_SEQ", "JCURSOR_ACKED", "JCURSOR_FIXED", "JFIN_ID", "JFIN_STATUS",
                 "JFIN_CODE", "JFIN_FIXED", "JFLOOR_SEQ", "JFLOOR_FIXED", "HIST_KIND",
                 "HIST_STATUS", "HIST_CODE", "HIST_CLASS", "HIST_FIXED", "HIST_NAMES",
                 "HIST_PAYLOAD_HEAD"):
        assert name in c, name
    assert c["WELCOME_FIXED"] == len(P.encode_welcome(1, 1, 1, P.Tunables(1, 1, 1, 1, 1, 1)))
    assert c["DELIVER_MAX"] == c["DELIVER_FIXED"] + 5 * P.MAX_NAME


# Raw offsets into a frame, record or event in the core's sources: a pointer or array
# named like the ones ext/ uses for them, plus or indexed by a number (``p``, which also
# walks names, only plus a number: ``p[0]`` is a name's length byte). wire.pxi's byte
# order helpers (get16 .. put64) index the bytes of one integer and are left out.
_RAW = re.compile(r"\b(h|hdr|head|hb|t|fixed|entry|sc|b|blob|buf)\s*(\+\s*[1-9]\d*\b|\[\s*\d+\s*\])"
                  r"|\bp\s*\+\s*[1-9]\d*\b")


def test_no_wire_offsets_typed_by_hand_in_ext():
    ext = Path(__file__).resolve().parent.parent / "ext"
    found = []
    for src in sorted([*ext.glob("*.pxi"), ext / "core.pyx"]):
        if src.name in ("protocol.pxi", "wire.pxi"):
            continue
        for n, line in enumerate(src.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if _RAW.search(code):
                found.append(f"{src.name}:{n}: {line.strip()}")
    assert not found, "offsets to take from router/protocol.py:\n" + "\n".join(found)


class _Recorder:
    """A store that keeps the records the core commits."""

    def __init__(self) -> None:
        self.records = bytearray()

    def commit(self, records: bytes, sync: bool) -> None:
        self.records += records


def _record(kind: P.Record, body: bytes) -> bytes:
    from router import checks
    raw = P.RECORD_KIND.pack(kind) + body
    return P.RECORD.pack(len(raw), checks.crc32c_check(raw)[0]) + raw


def _parse_records(blob: bytes) -> list[tuple[P.Record, bytes]]:
    """(kind, fields after the kind byte) of each record, with its length and CRC checked."""
    from router import checks
    out, off = [], 0
    while off < len(blob):
        blen, crc = P.RECORD.unpack_from(blob, off)
        assert P.RECORD_AT == {"REC_LEN": 0, "REC_CRC": 4, "REC_HEAD": P.RECORD_HEAD}
        body = bytes(blob[off + P.RECORD_HEAD: off + P.RECORD_HEAD + blen])
        assert len(body) == blen and checks.crc32c_check(body)[0] == crc
        out.append((P.Record(body[P.RECORD_KIND_AT["JREC_KIND"]]),
                    body[P.RECORD_KIND_AT["JREC_FIELDS"]:]))
        off += P.RECORD_HEAD + blen
    return out


def _names(buf: bytes, off: int, count: int) -> tuple[list[str], int]:
    out = []
    for _ in range(count):
        ln = P.NAME_LEN.unpack_from(buf, off)[0]
        out.append(buf[off + P.NAME_LEN.size: off + P.NAME_LEN.size + ln].decode())
        off += P.NAME_LEN.size + ln
    return out, off


@pytest.fixture
def inproc_core(tmp_path):
    import zmq
    from support import Peer

    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    url = f"ipc://{tmp_path}/core.sock"
    sock.bind(url)
    store = _Recorder()
    c = core.Core(sock, store=store)
    peers = [Peer(url), Peer(url)]
    yield c, store, peers
    for p in peers:
        p.close()
    sock.close(linger=0)


def _until(c, peer, command: P.Command, passes: int = 400) -> list[bytes]:
    """Run the core until ``peer`` gets a ``command`` (others are skipped)."""
    for _ in range(passes):
        c.run(5)
        frames = peer.recv(0.005)
        if frames and frames[0][P.PREFIX_AT["PREFIX_COMMAND"]] == command:
            return frames
    raise AssertionError(f"no {command.name}")


def test_journal_records_and_history_events_follow_the_table(inproc_core):
    from router.history import parse_events

    c, store, (s, e) = inproc_core
    s.send(P.encode_hello(P.Role.SENDER, "orders"))
    _until(c, s, P.Command.WELCOME)
    e.send(P.encode_hello(P.Role.ENDPOINT, "u7", [("user:7", 0)]))
    _until(c, e, P.Command.WELCOME)
    mid = 0x1122334455667788
    s.send(P.encode_send("user:7", mid, P.MsgClass.ORDER, kind="order.created",
                         key="order:1", ttl_ms=60_000, flags=P.Flag.LZ4), b"payload")
    frames = _until(c, e, P.Command.DELIVER)
    d = P.decode_deliver(frames[0], frames[1])
    e.send(P.encode_ack([("user:7", d.seq)]))
    while P.Status.DELIVERED not in [r.status for r in
                                     P.decode_receipts(_until(c, s, P.Command.RECEIPT)[0])]:
        pass

    (k1, msg), (k2, ack), (k3, fin) = _parse_records(store.records)
    assert (k1, k2, k3) == (P.Record.MSG, P.Record.ACK, P.Record.FIN)
    seq, msg_id, acc, expire, cls, flags = P.JOURNAL_MSG.unpack_from(msg)
    assert (seq, msg_id, acc, cls, flags) == (d.seq, mid, d.accepted_us, P.MsgClass.ORDER,
                                              P.Flag.LZ4)
    assert acc < expire <= acc + 60_000_000 + 1_000_000
    names, end = _names(msg, P.JOURNAL_MSG.size, 5)
    assert names == ["user:7", "orders", "order.created", "", "order:1"]
    assert msg[end:] == b"payload"
    assert P.JOURNAL_ACK.unpack_from(ack) == (d.seq,)
    assert _names(ack, P.JOURNAL_ACK.size, 1) == (["user:7"], len(ack))
    assert P.JOURNAL_FIN.unpack_from(fin) == (mid, P.Status.DELIVERED, 0)
    assert _names(fin, P.JOURNAL_FIN.size, 1) == (["orders"], len(fin))

    [(kind, cursor)] = _parse_records(c.checkpoint())
    assert kind == P.Record.CURSOR
    next_seq, acked = P.JOURNAL_CURSOR.unpack_from(cursor)
    assert acked == d.seq and next_seq >= d.seq
    assert _names(cursor, P.JOURNAL_CURSOR.size, 1) == (["user:7"], len(cursor))

    events = list(parse_events(c.drain_history()))
    assert [ev[2] for ev in events] == ["accepted", "sent", "acked", "final"]
    assert {(ev[0], ev[3], ev[8]) for ev in events} == {("order:1", mid, "orders")}
    assert events[0][12] == b"payload" and events[-1][5] == "DELIVERED"


def test_the_core_replays_records_built_from_the_table(inproc_core):
    c, store, _ = inproc_core
    floor = _record(P.Record.FLOOR, P.JOURNAL_FLOOR.pack(1000))
    body = P.JOURNAL_MSG.pack(5, 77, 1, 0, P.MsgClass.CHAT, 0)
    for name in (b"user:9", b"orders", b"chat", b"", b""):
        body += P.NAME_LEN.pack(len(name)) + name
    msg = _record(P.Record.MSG, body + b"hello")
    cursor = _record(P.Record.CURSOR, P.JOURNAL_CURSOR.pack(9, 3) + b"\x06user:8")
    fin = _record(P.Record.FIN, P.JOURNAL_FIN.pack(77, P.Status.ACCEPTED, 0) + b"\x06orders")
    blob = floor + msg + cursor + fin
    assert c.replay(blob, 1) == (len(blob), 4)
    st = c.stats()
    assert (st["seq_floor"], st["replayed"], st["queued"]) == (1000, 1, 1)
    # a FLOOR one byte too long does not parse: replay stops before it
    bad = _record(P.Record.FLOOR, P.JOURNAL_FLOOR.pack(2000) + b"\x00")
    assert c.replay(floor + bad, 2) == (len(floor), 1)
    assert c.stats()["seq_floor"] == 1000
