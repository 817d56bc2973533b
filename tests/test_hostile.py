"""Hostile or broken peers: what one peer says cannot corrupt what others receive."""

from __future__ import annotations

import multiprocessing as mp
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from router import libzmq_check
from router import protocol as P
from router.client import Endpoint, Sender
from router.protocol import Command, ErrorCode, MsgClass, Role, Status

from conftest import Peer, free_port
from hostile_load import fuzz_processes
from hostile_load import run as hostile_run
from stalled_pipes import flood_and_hang_up


def error_or_welcome(peer: Peer, timeout: float = 2.0) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while True:
        frames = peer.recv(max(deadline - time.monotonic(), 0))
        assert frames is not None, "neither ERROR nor WELCOME"
        if frames[0][2] in (Command.ERROR, Command.WELCOME):
            return frames


def test_a_cursor_near_2_64_is_refused_and_numbering_never_wraps(router):
    with Peer(router.url) as bad:
        bad.send(P.encode_hello(Role.ENDPOINT, "hostile", [("user:wrap", 2**64 - 2)]))
        frames = error_or_welcome(bad)
        assert frames[0][2] == Command.ERROR
        code, _, text = P.decode_error(frames[0], frames[1])
        assert code == ErrorCode.BAD_CURSOR and "2**62" in text
        bad.send(P.encode_bind([("user:wrap", P.MAX_CURSOR + 1)]))
        frames = error_or_welcome(bad)
        assert P.decode_error(frames[0], frames[1])[0] == ErrorCode.BAD_CURSOR
    # the real owner sees ordinary numbering, nothing handed out twice or skipped
    with Endpoint(router.url, ["user:wrap"]) as owner, Sender(router.url, "orders") as s:
        ids = [s.send("user:wrap", {"n": n}) for n in range(3)]
        got = [owner.recv(timeout=2) for _ in ids]
        assert [d.seq for d in got] == [1, 2, 3]
        for d in got:
            owner.ack(d)
        owner.flush()
        for mid in ids:
            assert s.wait(mid, Status.DELIVERED).status == Status.DELIVERED


def test_the_highest_honoured_cursor_continues_numbering_above_it(router):
    with Peer(router.url) as ep, Peer(router.url) as s:
        ep.hello(Role.ENDPOINT, "restored-app", [("user:high", P.MAX_CURSOR)])
        s.hello(Role.SENDER, "orders")
        s.send(P.encode_send("user:high", 1, MsgClass.ORDER), b"x")
        f = ep.recv_command(Command.DELIVER)
        assert P.decode_deliver(f[0], f[1]).seq == P.MAX_CURSOR + 1


# ---- connections that stop at the high-water mark, then hang up --------------------------

def _slow_router(endpoint: str, heartbeat_ms: int, seconds: float) -> subprocess.Popen:
    script = Path(__file__).with_name("stalled_pipes.py")
    return subprocess.Popen([sys.executable, str(script), endpoint, str(heartbeat_ms),
                             str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.long  # a probe of libzmq itself, not of the router: 12 s
def test_libzmq_aborts_when_a_zmtp_heartbeat_meets_a_stopped_connection():
    """The mechanism behind the router's aborts, on a bare ROUTER: input stopped at
    RCVHWM, the peer hangs up, the ZMTP heartbeat timer writes to the dead connection and
    libzmq 4.3.5 asserts (!_io_error). Without ZMTP heartbeats the same traffic is fine,
    which is why the router socket runs none (router/server.py, PROTOCOL.md §1)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = _slow_router(endpoint, 0, 6)
    time.sleep(0.3)
    flood_and_hang_up(endpoint, 5)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and b"survived" in out, out.decode(errors="replace")

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = _slow_router(endpoint, 100, 6)
    time.sleep(0.3)
    flood_and_hang_up(endpoint, 5)
    out, _ = proc.communicate(timeout=30)
    if proc.returncode == 0:
        pytest.skip("this libzmq no longer aborts on a heartbeat to a stopped connection")
    assert proc.returncode == -signal.SIGABRT, out.decode(errors="replace")
    assert b"_io_error" in out


def test_full_speed_fuzzers_never_abort_the_router(make_router):
    """Fuzzing peers (they reconnect, say BYE and vanish) at full speed. With ZMTP
    heartbeats on the router socket and a receive high-water mark that stops busy
    connections (--rcvhwm 10) this aborted the router within about a second, 4 runs of
    4; with a bounded mark and no heartbeats, rarely (once in three 40 s runs at 1,000).
    At the defaults (no ZMTP heartbeats, unbounded receive queue) no connection's input
    ever stops, the router lives, and a well-behaved pair gets through afterwards."""
    r = make_router("--heartbeat-ms", "100")
    ctx = mp.get_context("spawn")
    fuzzers = [ctx.Process(target=fuzz_processes, args=(r.url, 1 + i, 6, 8.0, False))
               for i in range(2)]
    for p in fuzzers:
        p.start()
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and r.proc.poll() is None:
            time.sleep(0.2)
        assert r.proc.poll() is None, r.log()[-2000:]
    finally:
        for p in fuzzers:
            p.join(15)
            if p.is_alive():
                p.kill()
    got = []
    with Endpoint(r.url, ["merchant:after-flood"], name="m") as ep, \
            Sender(r.url, "s", on_receipt=got.append) as s:
        s.send("merchant:after-flood", b"order")
        d = ep.recv(timeout=5)
        assert d is not None and d.payload == b"order"
        ep.ack(d)
        deadline = time.monotonic() + 5
        while not any(x.status == Status.DELIVERED for x in got) and \
                time.monotonic() < deadline:
            s.poll(0.1)
    assert any(x.status == Status.DELIVERED for x in got)
    assert r.proc.poll() is None


@pytest.mark.long
@pytest.mark.timeout(480)
def test_a_well_behaved_pair_beside_full_speed_fuzzers_loses_nothing():
    """The starvation run (tests/hostile_load.py): 4 processes x 6 fuzzing connections
    for 60 s beside a sender and an endpoint at 100 reliable orders a second. Asserted:
    the router lives, every send is answered and delivered once, the pair's p99 stays
    under a second and its endpoint is never silent for 2 s (issue 17's targets are
    250 ms and 1 s, measured 35-81 ms and 0.13 s here, with a 4x margin for a noisy
    machine; before quarantine p99 was 29-73 s), the peer table holds at most the pair
    one heartbeat after the fuzzers leave and nothing at the end, and memory returns to
    within 20% of its start."""
    r = hostile_run(60)
    print(r.line())
    assert r.router_alive, r.router_log
    assert r.answered == r.sent and r.delivered == r.sent and r.duplicates == 0
    assert r.p99() < 1.0 and r.longest_silence < 2.0, r.line()
    # no departed fuzzer is still listed (the pair itself may be mid-reconnect)
    assert r.peers_1hb <= 2 and r.peers_after == 0, r.line()
    assert r.rss_after < 1.2 * r.rss_start + 20, r.line()


# ---- quarantine and the HELLO budget ---------------------------------------------------------

def test_a_flood_of_faulty_messages_is_quarantined_for_the_rest_of_its_second(router):
    """Past errors_per_second faults, a connection's messages are ignored unanswered
    until its second ends: a valid SEND then gets no receipt; a second later it does."""
    with Peer(router.url) as p:
        p.hello(Role.SENDER, "flooder")
        for _ in range(40):
            p.send(b"not the protocol")  # BAD_VERSION: the peer's own fault
        p.send(P.encode_send("merchant:q", 1, MsgClass.ORDER), b"order")
        deadline = time.monotonic() + 0.5
        while (frames := p.recv(max(deadline - time.monotonic(), 0))) is not None:
            assert frames[0][2] != Command.RECEIPT, "a quarantined SEND was handled"
        time.sleep(1.0)
        p.send(P.encode_send("merchant:q", 2, MsgClass.ORDER), b"order")
        receipt = p.recv_command(Command.RECEIPT, skip_others=True)
        assert receipt is not None


def test_a_fifth_hello_in_one_second_is_refused(router):
    with Peer(router.url) as p:
        for i in range(4):
            p.hello(Role.SENDER, f"again-{i}")
        p.send(P.encode_hello(Role.SENDER, "again-4", ()))
        frames = error_or_welcome(p)
        assert frames[0][2] == Command.ERROR
        code, _ = P.ERROR.unpack_from(frames[0], P.PREFIX.size)
        assert code == ErrorCode.RATE_LIMITED and b"HELLO" in frames[1]


# ---- connections under a routing id another connection had ---------------------------------

@pytest.mark.skipif(not libzmq_check.honours_peer_routing_ids(),
                    reason="this libzmq ignores client-chosen routing ids (hardened): no new "
                           "connection can arrive under an id another one had")
def test_a_new_connection_under_a_known_routing_id_must_say_hello(router):
    """A client-chosen routing id is free again once libzmq has closed the connection
    that held it, while the peer that said HELLO on it is still listed (liveness has not
    run out). A new connection under that id is not that peer: the core tells
    connections apart (ext/zmqapi.h, zmqapi_msg_conn), drops the old peer as on a
    disconnect and answers the newcomer NOT_READY until it says HELLO."""
    with Peer(router.url, identity=b"client-chosen") as old:
        old.hello(Role.ENDPOINT, "first", [("user:reused-id", 0)])
    time.sleep(0.3)  # libzmq reads the old pipe to its end and frees the id
    with Peer(router.url, identity=b"client-chosen") as new:
        new.send(P.encode_bind([("user:other", 0)]))
        err = new.recv_command(Command.ERROR, skip_others=True)
        assert P.decode_error(err[0], err[1])[0] == ErrorCode.NOT_READY
        router.wait_for_log("peer disconnected: first (endpoint, replaced by a new connection)")
        new.hello(Role.SENDER, "second")

