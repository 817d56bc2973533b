"""Bad input gets an ERROR with a code and a message; everyone else keeps being served."""

from __future__ import annotations

import os
import threading
import time

import pytest

from router import protocol as P
from router.client import Endpoint, Sender
from router.protocol import Command, ErrorCode, MsgClass, Role, Status

from support import Peer, refusal_of


def error_of(peer: Peer, timeout: float = 2.0) -> tuple[ErrorCode, int, str]:
    frames = peer.recv_command(Command.ERROR, timeout)
    assert len(frames) == 2, frames
    return P.decode_error(frames[0], frames[1])




@pytest.fixture
def sender_peer(router):
    with Peer(router.url) as p:
        p.hello(Role.SENDER, "raw")
        yield p


def test_command_before_hello(router):
    with Peer(router.url) as p:
        p.send(P.encode_send("user:1", 1, MsgClass.ORDER), b"x")
        code, _, text = error_of(p)
        assert code == ErrorCode.NOT_READY and "HELLO" in text


def test_wrong_version(router):
    with Peer(router.url) as p:
        p.send(bytes((P.SIGNATURE, 9, Command.HELLO, 0)) + b"\x01\x01a\x00\x00")
        code, _, text = error_of(p)
        assert code == ErrorCode.BAD_VERSION and "version 1" in text


def test_bad_signature(router):
    with Peer(router.url) as p:
        p.send(b"GET / HTTP/1.1\r\n")
        assert error_of(p)[0] == ErrorCode.BAD_VERSION


def test_truncated_header(sender_peer):
    sender_peer.send(b"\xd5\x01")
    assert error_of(sender_peer)[0] == ErrorCode.MALFORMED
    full = P.encode_send("user:1", 7, MsgClass.ORDER, kind="order.created")
    sender_peer.send(full[:-3], b"payload")
    code, mid, text = error_of(sender_peer)
    assert code == ErrorCode.MALFORMED and mid == 7 and "length" in text


def test_missing_payload_frame(sender_peer):
    """A SEND whose header is readable is refused by its id, like any other refusal."""
    sender_peer.send(P.encode_send("user:1", 8, MsgClass.ORDER))
    receipts, (code, mid, _) = refusal_of(sender_peer)
    assert code == ErrorCode.MALFORMED and mid == 8
    assert [(r.msg_id, r.status, r.code) for r in receipts] == [
        (8, Status.REFUSED, ErrorCode.MALFORMED)]


def test_extra_frames(sender_peer):
    sender_peer.send(P.encode_send("user:1", 9, MsgClass.ORDER), b"payload", b"extra", b"more")
    receipts, (code, mid, text) = refusal_of(sender_peer)
    assert code == ErrorCode.MALFORMED and mid == 9 and "payload frame" in text
    assert [(r.msg_id, r.status) for r in receipts] == [(9, Status.REFUSED)]
    sender_peer.send(P.prefix(Command.HEARTBEAT), b"extra")
    assert error_of(sender_peer)[0] == ErrorCode.MALFORMED


def test_empty_message(sender_peer):
    sender_peer.send(b"")
    assert error_of(sender_peer)[0] == ErrorCode.MALFORMED


def test_unknown_command(sender_peer):
    sender_peer.send(bytes((P.SIGNATURE, P.VERSION, 0x7E, 0)))
    assert error_of(sender_peer)[0] == ErrorCode.UNKNOWN_COMMAND
    # a command only the router sends
    sender_peer.send(bytes((P.SIGNATURE, P.VERSION, Command.DELIVER, 0)))
    assert error_of(sender_peer)[0] == ErrorCode.UNKNOWN_COMMAND


def test_bad_role_and_bad_hello(router):
    with Peer(router.url) as p:
        p.send(P.prefix(Command.HELLO) + bytes((9, 1)) + b"x" + b"\x00\x00")
        assert error_of(p)[0] == ErrorCode.BAD_ROLE
        p.send(P.prefix(Command.HELLO) + bytes((1, 40)) + b"short")
        assert error_of(p)[0] == ErrorCode.MALFORMED


def test_oversized_payload_refused_with_receipt(make_router):
    r = make_router("--max-payload", "1000")
    with Sender(r.url, "orders", compress_above=-1) as s:
        with pytest.raises(ValueError, match="over the router's cap"):
            s.send("user:1", b"x" * 1001)  # the SDK knows the cap from WELCOME
    with Peer(r.url) as p:
        p.hello(Role.SENDER, "raw")
        p.send(P.encode_send("user:1", 11, MsgClass.ORDER), b"x" * 5000)
        receipts, (code, mid, text) = refusal_of(p)
        assert receipts == [P.Receipt(11, Status.REFUSED, ErrorCode.TOO_LARGE)]
        assert code == ErrorCode.TOO_LARGE and mid == 11 and "cap" in text


def test_unknown_channel(sender_peer):
    sender_peer.send(P.encode_send("order:404", 12, MsgClass.ORDER, flags=P.Flag.CHANNEL), b"x")
    receipts, (code, mid, text) = refusal_of(sender_peer)
    assert receipts == [P.Receipt(12, Status.REFUSED, ErrorCode.UNKNOWN_CHANNEL)]
    assert code == ErrorCode.UNKNOWN_CHANNEL and mid == 12 and "JOIN" in text


def test_bad_address(sender_peer):
    frame = P.prefix(Command.SEND) + P.SEND.pack(13, 0, MsgClass.ORDER, 6, 0, 0) + b"us er1"
    sender_peer.send(frame, b"x")
    receipts, (code, mid, _) = refusal_of(sender_peer)
    assert receipts == [P.Receipt(13, Status.REFUSED, ErrorCode.BAD_ADDRESS)]
    assert code == ErrorCode.BAD_ADDRESS and mid == 13


def test_bad_class(sender_peer):
    frame = P.prefix(Command.SEND) + P.SEND.pack(14, 0, 42, 6, 0, 0) + b"user:1"
    sender_peer.send(frame, b"x")
    receipts, (code, mid, _) = refusal_of(sender_peer)
    assert receipts == [P.Receipt(14, Status.REFUSED, ErrorCode.BAD_CLASS)]
    assert code == ErrorCode.BAD_CLASS and mid == 14


def test_corrupt_ack_and_join_lists(sender_peer):
    sender_peer.send(P.prefix(Command.ACK) + b"\x00\x05\x03abc")
    assert error_of(sender_peer)[0] == ErrorCode.MALFORMED
    sender_peer.send(P.prefix(Command.JOIN) + b"\x07order:1\x00\x02\x03abc")
    assert error_of(sender_peer)[0] == ErrorCode.MALFORMED


def test_errors_are_rate_limited(make_router):
    r = make_router("--errors-per-second", "5")
    with Peer(r.url) as p:
        for _ in range(50):
            p.send(b"garbage")
        codes = []
        while (frames := p.recv(timeout=0.5)) is not None:
            codes.append(P.decode_error(frames[0], frames[1])[0])
        assert codes == [ErrorCode.BAD_VERSION] * 5 + [ErrorCode.RATE_LIMITED]


def test_garbage_flood_does_not_starve_other_peers(router):
    """One peer floods random bytes in a tight loop; a normal order still flows promptly."""
    stop = threading.Event()
    sent = [0]

    def flood():
        with Peer(router.url) as bad:
            deadline = time.monotonic() + 10
            while not stop.is_set() and time.monotonic() < deadline:
                bad.send(os.urandom(40), os.urandom(8))
                sent[0] += 1

    t = threading.Thread(target=flood)
    t.start()
    try:
        time.sleep(0.3)
        with Endpoint(router.url, ["merchant:1"]) as m, Sender(router.url, "orders") as s:
            latencies = []
            for i in range(20):
                t0 = time.monotonic()
                mid = s.send("merchant:1", {"i": i})
                d = m.recv(timeout=2)
                assert d is not None and d.seq == i + 1
                m.ack(d)
                m.flush()
                assert s.wait(mid, Status.DELIVERED, timeout=2).status == Status.DELIVERED
                latencies.append(time.monotonic() - t0)
            latencies.sort()
            # generous: a felt delay is 500 ms; the flood must not push us near it
            assert latencies[len(latencies) // 2] < 0.25, latencies
    finally:
        stop.set()
        t.join()
    assert sent[0] > 1000
    assert router.proc.poll() is None  # still serving


@pytest.mark.parametrize("header", [
    P.prefix(Command.READY) + b"\x00\x01",              # READY cut inside its fixed fields
    P.prefix(Command.REQUEST) + b"\x00" * 5,           # REQUEST too short for id + TTL
    P.prefix(Command.REPLY) + b"\x01",                 # REPLY without its job id
])
def test_truncated_service_commands(router, header):
    # Found by tests/test_fuzz.py: a READY shorter than its fixed fields raised out of the
    # broker and stopped the router.
    frames = [header] if header[2] == Command.READY else [header, b"body"]
    with Peer(router.url) as w:
        w.hello(Role.WORKER, "short-frames")
        w.send(*frames)
        code, _, text = error_of(w)
        assert code == ErrorCode.MALFORMED, text
    with Endpoint(router.url, ["merchant:2"]) as m, Sender(router.url, "orders") as s:
        s.send("merchant:2", {"still": "serving"})
        assert m.recv(timeout=2) is not None


# ---- service commands (READY / REQUEST / REPLY, handled by router/broker.py) -------------

#: Text that would mean Python internals reached the wire instead of a protocol message.
PYTHON_INTERNALS = ("unpack", "struct", "buffer", "Traceback", "Error:", "codec", "decode")


def _no_internals(text: str) -> None:
    assert not any(s in text for s in PYTHON_INTERNALS), text


def _nothing_but_heartbeats(peer: Peer, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (frames := peer.recv(max(deadline - time.monotonic(), 0))) is not None:
        assert frames[0][2] == Command.HEARTBEAT, frames


def test_malformed_service_commands_are_rate_limited(make_router):
    # 10,000 malformed READYs once drew 10,000 ERRORs in 0.16 s, with struct's text.
    r = make_router("--errors-per-second", "20")
    with Peer(r.url) as w:
        w.hello(Role.WORKER, "flooder")
        t0 = time.monotonic()
        for _ in range(10_000):
            w.send(P.prefix(Command.READY) + b"\x00")  # cut inside its credit field
        got = []
        while (frames := w.recv(timeout=1.0)) is not None:
            if frames[0][2] == Command.ERROR:
                got.append(P.decode_error(frames[0], frames[1]))
        elapsed = time.monotonic() - t0 - 1.0  # minus the final second of silence
    windows = int(elapsed) + 2  # per-second windows the flood and its answers spanned
    assert 21 <= len(got) <= 21 * windows, (len(got), elapsed)
    codes = [c for c, _, _ in got]
    assert codes[:20] == [ErrorCode.MALFORMED] * 20 and codes[20] == ErrorCode.RATE_LIMITED
    assert codes.count(ErrorCode.RATE_LIMITED) <= windows
    for _, _, text in got:
        _no_internals(text)
    assert "READY header is 5 bytes, needs at least 7" in got[0][2]
    assert "PROTOCOL.md" in got[0][2]
    with Endpoint(r.url, ["merchant:3"]) as m, Sender(r.url, "orders") as s:
        s.send("merchant:3", {"still": "serving"})
        assert m.recv(timeout=2) is not None


@pytest.mark.parametrize("frames, code, mid, words", [
    ([P.prefix(Command.READY) + b"\x00\x01\x00"], ErrorCode.MALFORMED, 0,
     "READY names no service"),
    ([P.prefix(Command.READY) + b"\x00\x01\x05echo"], ErrorCode.MALFORMED, 0,
     "READY header is 11 bytes, but its service name length 5 makes it 12"),
    ([P.prefix(Command.READY) + b"\x00\x01\x04ec o"], ErrorCode.MALFORMED, 0,
     "printable ASCII"),
    ([P.prefix(Command.READY) + b"\x00\x01\x02\xff\xfe"], ErrorCode.MALFORMED, 0,
     "printable ASCII"),
    ([P.prefix(Command.REQUEST) + bytes(3), b"x"], ErrorCode.MALFORMED, 0,
     "REQUEST header is 7 bytes, needs at least 17"),
    ([P.prefix(Command.REQUEST) + (77).to_bytes(8, "big") + b"\x00", b"x"],
     ErrorCode.MALFORMED, 77, "REQUEST header is 13 bytes, needs at least 17"),
    ([P.encode_request("echo", 78)[:-1], b"x"], ErrorCode.MALFORMED, 78,
     "service name length 4 makes it 21"),
    ([P.prefix(Command.REPLY) + (79).to_bytes(8, "big"), b"x"], ErrorCode.MALFORMED, 79,
     "REPLY header is 12 bytes, must be 14"),
    ([P.encode_ready("router.presence")], ErrorCode.MALFORMED, 0,
     "answered by the router itself"),
])
def test_service_command_errors_say_what_is_wrong(router, frames, code, mid, words):
    answer_too = frames[0][2] == Command.REQUEST and mid != 0
    with Peer(router.url) as w:
        w.hello(Role.WORKER, "sloppy-worker")
        w.send(*frames)
        got = {}  # an ERROR and, for a REQUEST with a readable id, its REPLY (either order)
        while len(got) < 1 + answer_too:
            f = w.recv(timeout=2.0)
            assert f is not None, f"got only {list(got)}"
            if f[0][2] != Command.HEARTBEAT:
                got[f[0][2]] = f
        err = P.decode_error(*got[Command.ERROR])
        assert err[:2] == (code, mid), err
        assert words in err[2], err[2]
        _no_internals(err[2])
        if answer_too:  # the request id was readable: the client gets its REPLY, not a wait
            reply = got[Command.REPLY]
            assert P.decode_reply(reply[0]) == (mid, ErrorCode.MALFORMED)
            assert reply[1].decode() == err[2]


def test_ready_and_reply_from_a_non_worker_are_bad_role(router):
    with Peer(router.url) as p:
        p.hello(Role.ENDPOINT, "rider-app-5", [("rider:5", 0)])
        p.send(P.encode_ready("dispatch.fake"))
        code, _, text = error_of(p)
        assert code == ErrorCode.BAD_ROLE and "role 2 (ENDPOINT)" in text and "WORKER" in text
        p.send(P.encode_reply(5, 0), b"x")
        code, mid, text = error_of(p)
        assert (code, mid) == (ErrorCode.BAD_ROLE, 5) and "workers" in text
        # it did not become a worker: a request for that name is never handed to it
        with Sender(router.url, "client") as c:
            r = c.request("dispatch.fake", b"x", ttl_ms=300)
            assert r.code == ErrorCode.NO_SERVICE
        _nothing_but_heartbeats(p, 0.2)
        # the same connection may become a worker with a new HELLO
        p.hello(Role.WORKER, "now-a-worker")
        p.send(P.encode_ready("dispatch.fake"))
        with Sender(router.url, "client") as c:
            rid = c.submit("dispatch.fake", b"job", ttl_ms=3000)
            req = p.recv_command(Command.REQUEST)
            job, _, service = P.decode_request(req[0])
            assert (service, req[1]) == ("dispatch.fake", b"job")
            p.send(P.encode_reply(job, 0), b"done")
            reply = None
            deadline = time.monotonic() + 3
            while reply is None and time.monotonic() < deadline:
                c.poll(0.05)
                reply = c.take_reply(rid)
            assert reply is not None and (reply.code, reply.payload) == (ErrorCode.NONE, b"done")


def test_reply_for_an_unknown_job(router):
    with Peer(router.url) as w:
        w.hello(Role.WORKER, "w-unknown")
        w.send(P.encode_reply(999, 0), b"x")  # before READY: it holds no jobs
        code, mid, text = error_of(w)
        assert (code, mid) == (ErrorCode.UNKNOWN_JOB, 999) and "READY" in text
        w.send(P.encode_ready("lookup"))
        with Sender(router.url, "client") as c:
            rid = c.submit("lookup", b"q", ttl_ms=3000)
            job = P.decode_request(w.recv_command(Command.REQUEST)[0])[0]
            w.send(P.encode_reply(job + 1000, 0), b"not yours")  # a job it never got
            code, mid, text = error_of(w)
            assert (code, mid) == (ErrorCode.UNKNOWN_JOB, job + 1000)
            assert "does not hold" in text
            w.send(P.encode_reply(job, 0), b"answer")  # the real one still goes through
            w.send(P.encode_reply(job, 0), b"again")  # a repeat is unknown now
            assert error_of(w)[:2] == (ErrorCode.UNKNOWN_JOB, job)
            deadline = time.monotonic() + 3
            reply = None
            while reply is None and time.monotonic() < deadline:
                c.poll(0.05)
                reply = c.take_reply(rid)
            assert reply is not None and reply.payload == b"answer"
            c.poll(0.2)
            assert c.take_reply(rid) is None  # the client got one reply, not two


def test_ready_with_credit_zero_pauses_a_worker(router):
    with Peer(router.url) as w, Sender(router.url, "client") as c:
        w.hello(Role.WORKER, "w-paused")
        w.send(P.encode_ready("slowpoke", credit=0))
        rid = c.submit("slowpoke", b"first", ttl_ms=5000)
        c.poll(0.3)
        _nothing_but_heartbeats(w, 0.3)
        w.send(P.encode_ready("slowpoke", credit=1))  # resume: the waiting request comes
        req = w.recv_command(Command.REQUEST)
        job = P.decode_request(req[0])[0]
        assert req[1] == b"first"
        w.send(P.encode_ready("slowpoke", credit=0))  # pause while holding a job
        rid2 = c.submit("slowpoke", b"second", ttl_ms=5000)
        c.poll(0.2)
        w.send(P.encode_reply(job, 0), b"one")  # the held job still completes
        deadline = time.monotonic() + 3
        while c.take_reply(rid) is None:
            assert time.monotonic() < deadline
            c.poll(0.05)
        _nothing_but_heartbeats(w, 0.3)  # paused: the second request is not handed over
        assert c.take_reply(rid2) is None  # still waiting, for another worker or a resume
        w.send(P.encode_ready("slowpoke", credit=2))
        assert w.recv_command(Command.REQUEST)[1] == b"second"


def test_a_job_that_expires_at_its_worker_keeps_the_credit_until_the_late_reply(router):
    with Peer(router.url) as w, Sender(router.url, "client") as c:
        w.hello(Role.WORKER, "w-slow")
        w.send(P.encode_ready("slow", credit=1))
        first = c.submit("slow", b"one", ttl_ms=300)
        job = P.decode_request(w.recv_command(Command.REQUEST)[0])[0]
        deadline = time.monotonic() + 3
        while (r := c.take_reply(first)) is None:  # the worker sits on it past the TTL
            assert time.monotonic() < deadline
            c.poll(0.05)
        assert r.code == ErrorCode.EXPIRED
        second = c.submit("slow", b"two", ttl_ms=5000)
        _nothing_but_heartbeats(w, 0.3)  # still busy with the first: nothing more for it
        w.send(P.encode_reply(job, 0), b"late")
        code, mid, text = error_of(w)
        assert (code, mid) == (ErrorCode.EXPIRED, job) and "TTL" in text
        req = w.recv_command(Command.REQUEST)  # its credit is free: the second comes now
        assert req[1] == b"two"
        w.send(P.encode_reply(P.decode_request(req[0])[0], 0), b"two done")
        while (r := c.take_reply(second)) is None:
            assert time.monotonic() < deadline + 3
            c.poll(0.05)
        assert r.payload == b"two done"
        c.poll(0.2)
        assert c.take_reply(first) is None  # the late answer never reached the client


def test_presence_with_a_bad_query_says_what_it_wants(router):
    with Sender(router.url, "ops") as s:
        r = s.request("router.presence", b"{not json", ttl_ms=2000)
        assert r.code == ErrorCode.MALFORMED
        assert b"JSON list of addresses" in r.payload and b"orjson" not in r.payload
