"""Delivery promises under crashes, restarts, slow and absent endpoints, bad disks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from router import protocol as P
from router.client import Endpoint, Sender, payload_json
from router.history import History
from router.protocol import Command, ErrorCode, MsgClass, Role, Status

from support import ROOT, Peer, RouterProcess, crash_loop, drain, wait_until

FAST = ("--heartbeat-ms", "300", "--retry-ms", "300", "--retry-max-ms", "1000")


def test_sigkill_restarts_lose_nothing_accepted():
    t = crash_loop(3, 1, *FAST)
    assert len(t.accepted) > 200


@pytest.mark.long
def test_sigkill_crash_loop_25_kills():
    t = crash_loop(25, 7, *FAST)
    assert len(t.accepted) > 2000


def test_offline_endpoint_gets_backlog_in_order(make_router):
    r = make_router(*FAST)
    with Sender(r.url, "orders") as s:
        ids = [s.send("rider:9", {"n": i}, msg_class=MsgClass.DISPATCH) for i in range(3000)]
        for mid in ids[-1:]:
            assert s.wait(mid, Status.ACCEPTED, timeout=10).status == Status.ACCEPTED
        time.sleep(1.5)  # "minutes" offline, compressed: several heartbeat periods
        with Endpoint(r.url, ["rider:9"]) as rider:
            got = drain(rider, 3000, timeout=30)
        assert [payload_json(d)["n"] for d in got] == list(range(3000))
        assert s.wait(ids[-1], Status.DELIVERED, timeout=10).status == Status.DELIVERED


def test_backlog_survives_restart_and_resumes_from_cursor(make_router):
    r = make_router(*FAST)
    with Sender(r.url, "orders") as s:
        ids = [s.send("user:3", str(i)) for i in range(100)]
        s.wait(ids[-1], Status.ACCEPTED, timeout=5)
    with Endpoint(r.url, ["user:3"]) as u:
        first = drain(u, 40)
        cursors = u.cursors
    r.kill()
    r.restart()
    with Endpoint(r.url, ["user:3"], cursors=cursors) as u:
        rest = drain(u, 60)
        assert u.recv(timeout=0.5) is None
    assert [int(d.payload) for d in first + rest] == list(range(100))


def test_dedup_same_id_same_receipt_delivered_once(router):
    with Endpoint(router.url, ["merchant:2"]) as m, Peer(router.url) as p:
        p.hello(Role.SENDER, "orders")
        frame = P.encode_send("merchant:2", 77, MsgClass.ORDER)
        p.send(frame, b"first")
        p.send(frame, b"again")
        statuses = []
        while len(statuses) < 2:
            statuses += [r.status for r in P.decode_receipts(p.recv_command(Command.RECEIPT)[0])]
        assert statuses == [Status.ACCEPTED, Status.ACCEPTED]
        d = drain(m, 1)[0]
        assert d.payload == b"first" and m.recv(timeout=0.3) is None
        assert P.decode_receipts(p.recv_command(Command.RECEIPT)[0])[0].status == Status.DELIVERED
        p.send(frame, b"third")  # after delivery: the same final receipt, no delivery
        assert P.decode_receipts(p.recv_command(Command.RECEIPT)[0]) == [
            P.Receipt(77, Status.DELIVERED, ErrorCode.NONE)]
        assert m.recv(timeout=0.3) is None


def test_dedup_survives_sigkill(make_router):
    r = make_router(*FAST)
    with Peer(r.url) as p:
        p.hello(Role.SENDER, "orders")
        p.send(P.encode_send("merchant:4", 99, MsgClass.ORDER), b"once")
        p.recv_command(Command.RECEIPT)
    r.kill()
    r.restart()
    with Peer(r.url) as p:
        p.hello(Role.SENDER, "orders")
        p.send(P.encode_send("merchant:4", 99, MsgClass.ORDER), b"once")
        assert P.decode_receipts(p.recv_command(Command.RECEIPT)[0])[0].status == Status.ACCEPTED
    with Endpoint(r.url, ["merchant:4"]) as m:
        assert drain(m, 1)[0].payload == b"once"
        assert m.recv(timeout=0.5) is None


def test_sender_retries_with_same_id_after_restart(make_router):
    r = make_router(*FAST)
    with Endpoint(r.url, ["user:5"]) as u, Sender(r.url, "svc", resend_after=0.5) as s:
        r.kill()
        mid = s.send("user:5", b"while down")  # nobody listens: kept, resent later
        r.restart()
        assert s.wait(mid, Status.ACCEPTED, timeout=15).status == Status.ACCEPTED
        got = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(got) < 1:
            d = u.recv(timeout=0.2)
            if d:
                got.append(d.payload)
                u.ack(d)
        u.flush()
        assert got == [b"while down"]
        assert s.wait(mid, Status.DELIVERED, timeout=10).status == Status.DELIVERED


def test_unacked_delivery_is_retried_with_backoff_then_fails(make_router):
    r = make_router("--retry-ms", "200", "--retry-max-ms", "400", "--max-attempts", "2",
                    "--heartbeat-ms", "2000")
    with Peer(r.url) as ep, Sender(r.url, "orders") as s:
        ep.hello(Role.ENDPOINT, "rider", [("rider:8", 0)])
        mid = s.send("rider:8", b"offer", msg_class=MsgClass.DISPATCH)
        times = []
        t0 = time.monotonic()
        while len(times) < 3:
            frames = ep.recv_command(Command.DELIVER, timeout=3)
            times.append(time.monotonic() - t0)
            assert P.decode_deliver(frames[0], frames[1]).seq == 1
        assert times[1] - times[0] >= 0.15 and times[2] - times[1] >= 0.3  # backing off
        rec = s.wait(mid, Status.DELIVERED, timeout=5)
        assert (rec.status, rec.code) == (Status.FAILED, ErrorCode.MAX_ATTEMPTS)


def test_ttl_expires_after_the_endpoint_leaves_with_it_unacked(router):
    # The sweep visits only unbound addresses with queued entries: an address must join
    # that list when its endpoint leaves, not only when a message arrives while unbound.
    with Sender(router.url, "dispatch") as s:
        r = Endpoint(router.url, ["rider:88"])
        mid = s.send("rider:88", b"offer", msg_class=MsgClass.DISPATCH, ttl_ms=600)
        assert drain(r, 1, ack=False)[0].payload == b"offer"
        r.close(bye=True)
        rec = s.wait(mid, Status.EXPIRED, timeout=5)
        assert (rec.status, rec.code) == (Status.EXPIRED, ErrorCode.EXPIRED)


def test_ttl_expires_while_endpoint_offline(router):
    with Sender(router.url, "dispatch") as s:
        mid = s.send("rider:66", b"offer", msg_class=MsgClass.DISPATCH, ttl_ms=300)
        rec = s.wait(mid, Status.EXPIRED, timeout=5)  # nobody bound: the sweep expires it
        assert (rec.status, rec.code) == (Status.EXPIRED, ErrorCode.EXPIRED)
    with Endpoint(router.url, ["rider:66"]) as r:
        assert r.recv(timeout=0.5) is None


def test_dead_peer_noticed_and_messages_kept(make_router):
    r = make_router("--heartbeat-ms", "200", "--liveness", "3")
    p = Peer(r.url)
    p.hello(Role.ENDPOINT, "silent-rider", [("rider:31", 0)])
    t0 = time.monotonic()
    with Sender(r.url, "ops") as ops:
        seen = ops.presence(["rider:31", "rider:nobody"])
        assert seen["rider:nobody"] is None and abs(seen["rider:31"] - time.time()) < 5
    p.close()  # no BYE, no heartbeats: like a phone in a lift
    r.wait_for_log("peer disconnected: silent-rider")
    assert time.monotonic() - t0 < 2.0  # 3 x 200 ms plus a tick and a log slice
    with Sender(r.url, "orders") as s:
        assert s.presence(["rider:31"]) == {"rider:31": None}  # offline now
        s.send("rider:31", b"kept")
        s.poll(0.2)
    with Endpoint(r.url, ["rider:31"]) as again:
        assert drain(again, 1)[0].payload == b"kept"


def test_reconnect_on_a_new_connection_takes_the_address_over(router):
    """Routing ids are the router's (no handover by id): the app's new connection moves
    the address with its HELLO, and the lingering old one is told ADDRESS_TAKEN."""
    with Sender(router.url, "orders") as s:
        first = Endpoint(router.url, ["user:44"], name="phone-44")
        s.send("user:44", b"1")
        assert drain(first, 1)[0].payload == b"1"
        # the app reconnects while the old socket lingers
        second = Endpoint(router.url, ["user:44"], name="phone-44", cursors=first.cursors)
        s.send("user:44", b"2")
        got = drain(second, 1)
        assert [d.payload for d in got] == [b"2"] and got[0].seq == 2
        assert first.recv(timeout=0.5) is None  # nothing more comes to the old one
        assert ErrorCode.ADDRESS_TAKEN in [e.code for e in first.errors]
        second.close()
        first.close(bye=False)


def journal_then_kill(r: RouterProcess, address: str, n: int) -> Path:
    """Journal ``n`` numbered messages for ``address``, SIGKILL the router, and return
    the segment file that holds them."""
    with Sender(r.url, "orders") as s:
        ids = [s.send(address, str(i)) for i in range(n)]
        s.wait(ids[-1], Status.ACCEPTED, timeout=5)
    r.kill()
    return sorted(Path(r.data_dir, "journal").glob("*.log"))[-1]


def test_corrupt_journal_tail_recovers_good_prefix(make_router):
    r = make_router(*FAST)
    seg = journal_then_kill(r, "merchant:7", 50)
    data = seg.read_bytes()
    seg.write_bytes(data[:-7] + b"\xff" * 3)  # a torn, garbled last record
    r.restart()
    assert "dropped" in r.wait_for_log("journal damaged, recovered the good prefix")
    with Endpoint(r.url, ["merchant:7"]) as m:
        got = drain(m, 49)
        assert [int(d.payload) for d in got] == list(range(49))
        assert m.recv(timeout=0.5) is None
    with Sender(r.url, "orders") as s:  # and the journal keeps working after repair
        mid = s.send("merchant:7", b"after")
        assert s.wait(mid, Status.ACCEPTED, timeout=5).status == Status.ACCEPTED


def test_corrupt_record_in_the_middle_is_reported(make_router):
    r = make_router(*FAST)
    seg = journal_then_kill(r, "merchant:8", 20)
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip a byte: a CRC fails
    seg.write_bytes(bytes(data))
    r.restart()
    r.wait_for_log("failed their CRC")
    with Endpoint(r.url, ["merchant:8"]) as m:
        got = [int(d.payload) for d in drain(m, 1)]
        while (d := m.recv(timeout=0.5)) is not None:
            got.append(int(d.payload))
            m.ack(d)
    assert got == list(range(len(got))) and 0 < len(got) < 20  # the good prefix, in order


def test_full_journal_refuses_clearly_and_loses_nothing_accepted(make_router):
    r = make_router(*FAST, "--max-journal-bytes", "40000")
    accepted, refused = [], []
    with Sender(r.url, "orders", compress_above=-1) as s:
        for _ in range(30):  # bursts of 10: group commits stay smaller than the budget
            ids = [s.send("merchant:9", b"x" * 300) for _ in range(10)]
            for mid in ids:
                rec = s.wait(mid, Status.ACCEPTED, timeout=5)
                (accepted if rec.status == Status.ACCEPTED else refused).append(rec)
        assert accepted and refused
        assert {(x.status, x.code) for x in refused} == {(Status.REFUSED, ErrorCode.STORAGE_FAILED)}
        assert any(e.code == ErrorCode.STORAGE_FAILED for e in s.errors)
    assert "budget" in r.wait_for_log("journal commit failed")
    with Endpoint(r.url, ["merchant:9"]) as m:
        assert len(drain(m, len(accepted))) == len(accepted)
        assert m.recv(timeout=0.5) is None


def test_real_full_disk(tmp_path):
    """ENOSPC from a real (tiny tmpfs) filesystem, when this machine lets us mount one."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    r = RouterProcess(*FAST)
    r.data_dir = str(mnt / "data")
    r.args[r.args.index("--data-dir") + 1] = r.data_dir
    try:
        r.start()
        with Sender(r.url, "orders", compress_above=-1) as s:
            recs = []
            for _ in range(20):  # bursts: each group commit fits what is left of the disk
                ids = [s.send("merchant:10", os.urandom(2000)) for _ in range(10)]
                recs += [s.wait(mid, Status.ACCEPTED, timeout=5) for mid in ids]
        refused = [x for x in recs if x.status == Status.REFUSED]
        accepted = [x for x in recs if x.status == Status.ACCEPTED]
        assert refused and accepted
        assert {x.code for x in refused} == {ErrorCode.STORAGE_FAILED}
        r.wait_for_log("No space left")
    finally:
        r.stop(signal.SIGKILL)
        subprocess.run(["umount", "-l", str(mnt)])


def test_history_keeps_the_highest_sequences(router):
    # Sequences are unsigned 64-bit; SQLite stores signed ones. An endpoint resuming with
    # a cursor above 2**63 once left the history writer in an open transaction (found by
    # tests/test_fuzz.py), and every later event of every order was lost. Cursors are now
    # capped at MAX_CURSOR (BAD_CURSOR above it): the highest honoured one still records.
    cursor = P.MAX_CURSOR
    with Endpoint(router.url, ["user:big"], cursors={"user:big": cursor}) as u, \
            Sender(router.url, "orders") as s:
        mid = s.send("user:big", {"status": "on the way"}, key="order:2002")
        assert drain(u, 1)[0].seq == cursor + 1
        s.wait(mid, Status.DELIVERED, timeout=5)
        later = s.send("user:big", {"status": "delivered"}, key="order:2003")
        drain(u, 1)
        s.wait(later, Status.DELIVERED, timeout=5)
    db = History(Path(router.data_dir) / "history.db")
    wait_until(lambda: [e["event"] for e in db.timeline("2003")][-1:] == ["final"], 5,
               "order 2003's final event in the history (written between loop slices)")
    assert [e["seq"] for e in db.timeline("2002") if e["event"] == "sent"] == [cursor + 1]
    assert [e["event"] for e in db.timeline("2003")][-1] == "final"
    assert "order history failed" not in router.log()


def test_order_history_timeline(router):
    with Endpoint(router.url, ["user:7"]) as u, Endpoint(router.url, ["merchant:881"]) as m, \
            Sender(router.url, "orders") as s:
        s.join("order:1001", ["user:7", "merchant:881"])
        created = s.send("merchant:881", {"items": ["noodles"], "notes": "no scallions"},
                         kind="order.created", key="order:1001")
        drain(m, 1)
        s.wait(created, Status.DELIVERED, timeout=5)
        chat = s.send("order:1001", "is it spicy?", kind="chat", channel=True,
                      msg_class=MsgClass.CHAT)
        drain(u, 1)
        drain(m, 1)
        s.wait(chat, Status.DELIVERED, timeout=5)
        expired = s.send("rider:404", b"offer", kind="dispatch.offer", key="order:1001",
                         msg_class=MsgClass.DISPATCH, ttl_ms=200)
        s.wait(expired, Status.EXPIRED, timeout=5)
    db = History(Path(router.data_dir) / "history.db")
    wait_until(lambda: any(e["msg_id"] == expired and e["event"] == "final"
                           for e in db.timeline("1001")), 5,
               "the expired offer's final event in the history (written between slices)")
    events = db.timeline("1001")
    by_msg = defaultdict(list)
    for e in events:
        by_msg[e["msg_id"]].append((e["event"], e["address"], e["status"]))
    assert by_msg[created] == [("accepted", None, "ACCEPTED"), ("sent", "merchant:881", None),
                               ("acked", "merchant:881", None), ("final", None, "DELIVERED")]
    assert sorted(by_msg[chat])[:1] == [("accepted", None, "ACCEPTED")]
    assert {x for x in by_msg[chat] if x[0] == "acked"} == {
        ("acked", "user:7", None), ("acked", "merchant:881", None)}
    assert by_msg[chat][-1] == ("final", None, "DELIVERED")
    assert by_msg[expired][-1] == ("final", None, "EXPIRED")
    ts = [e["ts_us"] for e in events]
    assert ts == sorted(ts)
    with Sender(router.url, "support-desk") as desk:  # the same record over the wire
        remote = desk.history("1001")
    assert [(e["event"], e["msg_id"]) for e in remote] == [
        (e["event"], e["msg_id"]) for e in events]
    assert any("no scallions" in (e["payload"] or "") for e in remote)
    out = subprocess.run([sys.executable, "-m", "router", "history", "1001", "--data-dir",
                          router.data_dir], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert "orders sent order.created" in out.stdout and "no scallions" in out.stdout
    assert "acked by merchant:881" in out.stdout and "EXPIRED" in out.stdout


def test_segments_roll_and_acked_ones_are_reclaimed_without_losing_numbering(make_router):
    r = make_router(*FAST, "--segment-bytes", "20000", "--dedup-seconds", "0.5")
    journal = Path(r.data_dir, "journal")
    with Endpoint(r.url, ["user:9"]) as u, Sender(r.url, "orders") as s:
        for burst in range(6):
            ids = [s.send("user:9", b"x" * 300) for _ in range(40)]
            got = drain(u, 40)
            s.wait(ids[-1], Status.DELIVERED, timeout=5)
            time.sleep(0.15)  # segments roll between loop slices
        assert got[-1].seq == 240
        cursors = u.cursors
    deadline = time.monotonic() + 5  # closed, fully acked segments older than the window go
    while len(list(journal.glob("*.log"))) > 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(list(journal.glob("*.log"))) <= 2
    assert max(int(p.stem) for p in journal.glob("*.log")) >= 3  # it did roll, several times
    r.kill()
    r.restart()
    with Sender(r.url, "orders") as s:
        s.send("user:9", b"after restart")
        s.poll(0.2)
    with Endpoint(r.url, ["user:9"], cursors=cursors) as u:
        d = drain(u, 1)[0]
        assert d.payload == b"after restart" and d.seq == 241  # numbering survived compaction
