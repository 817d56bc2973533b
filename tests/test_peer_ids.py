"""Client-chosen routing ids (issue #17, item 1): what a peer that sets ZMQ_IDENTITY can
do to the router, on the libzmq this process runs.

Stock libzmq (pyzmq's wheel) gives a connection the id its peer asked for; the two
attacks below then work, so on it those tests are expected failures (strict: a pass
there would mean the attack stopped working and the mark is stale). After
``scripts/build-hardened-libzmq`` every id is the router's and they must pass.
``router/libzmq_check.py`` tells the two apart; its own tests are at the end.
"""

from __future__ import annotations

import socket
import struct
import time
import urllib.request

import pytest
import zmq

from router import libzmq_check
from router import protocol as P
from router.client import Endpoint, Sender
from router.protocol import Command, Role, Status

from hostile_load import rss_mb
from support import Peer, free_port, wait_until

STOCK = libzmq_check.honours_peer_routing_ids()
needs_hardened = pytest.mark.xfail(
    STOCK, strict=True, raises=AssertionError,
    reason="stock libzmq honours client-chosen routing ids; "
           "run scripts/build-hardened-libzmq")


def _pair_gets_through(url: str, address: str) -> None:
    """A well-behaved sender and endpoint: one order delivered and receipted."""
    got: list[P.Receipt] = []
    with Endpoint(url, [address], name="pair-endpoint") as ep, \
            Sender(url, "pair-sender", on_receipt=got.append) as s:
        s.send(address, b"order")
        d = ep.recv(timeout=5)
        assert d is not None and d.payload == b"order", "the pair's order never arrived"
        ep.ack(d)
        ep.flush()
        deadline = time.monotonic() + 5
        while not any(x.status == Status.DELIVERED for x in got) and \
                time.monotonic() < deadline:
            s.poll(0.1)
    assert any(x.status == Status.DELIVERED for x in got), "no DELIVERED receipt"


def _assigned_id(router) -> bytes:
    """The routing id the router's socket gave a fresh anonymous connection. Ids are not
    on the wire; the broker's log line for a refused READY names it."""
    with Peer(router.url) as p:
        p.hello(Role.SENDER, "id-learner")
        p.send(P.encode_ready("nothing"))  # READY from a SENDER: BAD_ROLE, logged
        line = wait_until(
            lambda: next((ln for ln in router.log().splitlines()
                          if "refused service command from " in ln), None),
            5, "the router's log line for the refused READY")
    return bytes.fromhex(line.split("refused service command from ", 1)[1].split(":")[0])


@needs_hardened
def test_a_client_claiming_the_next_auto_id_cannot_abort_the_router(make_router):
    """libzmq never checks the ids it assigns (0x00 + a 32-bit counter) against those
    peers chose: a client that claims the next one makes the router assert
    (src/socket_base.cpp:2113) when the next anonymous peer connects. The router must
    live, and a well-behaved pair must still get through."""
    r = make_router()
    assigned = _assigned_id(r)
    assert len(assigned) == 5 and assigned[0] == 0, f"not an auto id: {assigned.hex()}"
    (counter,) = struct.unpack(">I", assigned[1:])
    claim = b"\x00" + struct.pack(">I", (counter + 1) & 0xFFFFFFFF)
    with Peer(r.url, identity=claim) as hostile:
        hostile.send(b"not the protocol")  # read (so identified) once it is answered
        assert hostile.recv(5) is not None, "the router never answered the claimant"
        with Peer(r.url) as anonymous:  # gets the next auto id: the claimed one
            anonymous.send(P.encode_hello(Role.SENDER, "anonymous", ()))
            anonymous.recv(3)
        assert r.proc.poll() is None, \
            f"router exited with {r.proc.returncode}:\n{r.log()[-1500:]}"
    _pair_gets_through(r.url, "merchant:after-claim")
    assert r.proc.poll() is None, r.log()[-1500:]


FLOOD_FRAME = b"\xee" * 16384  # BAD_VERSION: answered at most errors_per_second times
FLOOD_MB = 128


@needs_hardened
@pytest.mark.timeout(120)
def test_a_connection_claiming_a_live_id_is_read_and_its_flood_freed(make_router):
    """With ROUTER_HANDOVER off, stock libzmq parks a connection that claims the id of a
    live one and never reads it: everything it sends stays in the router (measured at
    16 MB/s under the fuzzer). Here it sends 128 MB of garbage; the router must read it
    (its HELLO afterwards is answered), drop it (RSS back near where it started), and
    keep serving the connection that held the id first."""
    r = make_router()
    with Peer(r.url, identity=b"live-id") as holder:
        holder.hello(Role.ENDPOINT, "holder", [("user:holder", 0)])
        base = rss_mb(r.pid)
        with Peer(r.url, identity=b"live-id") as flooder:
            flooder.sock.setsockopt(zmq.SNDTIMEO, 20_000)
            for _ in range(FLOOD_MB * 1024 * 1024 // len(FLOOD_FRAME)):
                flooder.sock.send(FLOOD_FRAME)
            grown = rss_mb(r.pid) - base
            # Quarantined for the rest of its second after the flood: HELLO until heard
            # (a hardened router answers within ~2 s; stock libzmq never reads it).
            hello = P.encode_hello(Role.SENDER, "flooder", ())
            deadline = time.monotonic() + 10
            welcomed = False
            while not welcomed and time.monotonic() < deadline:
                flooder.send(hello)
                t = time.monotonic() + 0.5
                while (f := flooder.recv(max(t - time.monotonic(), 0))) is not None:
                    if f[0][2] == Command.WELCOME:
                        welcomed = True
                        break
            assert welcomed, (f"the connection claiming a live id was never read (router RSS "
                              f"+{rss_mb(r.pid) - base:.0f} MB after a {FLOOD_MB} MB flood, "
                              f"+{grown:.0f} MB when it ended)")
        wait_until(lambda: rss_mb(r.pid) < base + FLOOD_MB / 4, 20,
                   f"router RSS back under {base:.0f} + {FLOOD_MB / 4:.0f} MB "
                   f"(now {rss_mb(r.pid):.0f} MB)")
        with Sender(r.url, "after-flood") as s:
            s.send("user:holder", b"still yours")
            frames = holder.recv_command(Command.DELIVER, timeout=5, skip_others=True)
            assert frames is not None and frames[1] == b"still yours"
    assert r.proc.poll() is None, r.log()[-1500:]


# ---- the probe ------------------------------------------------------------------------------

def _tcp_router_takes_chosen_id() -> bool:
    """The probe's question over tcp, the transport hostile peers use."""
    ctx = zmq.Context()
    try:
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.ROUTING_ID, b"over-tcp")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        dealer.send(b"x")
        assert router.poll(5000), "nothing over tcp within 5 s"
        ident, _ = router.recv_multipart()
        dealer.close()
        router.close()
        return ident == b"over-tcp"
    finally:
        ctx.term()


def test_the_inproc_probe_agrees_with_tcp():
    assert libzmq_check.honours_peer_routing_ids() == _tcp_router_takes_chosen_id()


def test_the_probe_is_quick_and_leaves_nothing_open():
    before = len(list(__import__("pathlib").Path("/proc/self/fd").iterdir()))
    started = time.monotonic()
    for _ in range(20):
        libzmq_check.honours_peer_routing_ids(timeout=1.0)
    assert time.monotonic() - started < 5
    after = len(list(__import__("pathlib").Path("/proc/self/fd").iterdir()))
    assert after <= before + 1  # no socket, pipe or eventfd left behind


def test_serve_warns_and_exports_a_gauge_on_a_libzmq_that_honours_chosen_ids(make_router):
    port = free_port()
    r = make_router("--metrics-port", str(port))
    body = wait_until(lambda: _scrape(port), 10, "a /metrics scrape")
    line = next((ln for ln in body.splitlines()
                 if ln.startswith("router_libzmq_peer_chosen_ids ")), None)
    assert line is not None, "router_libzmq_peer_chosen_ids is not exported"
    assert float(line.split()[1]) == (1.0 if STOCK else 0.0)
    warned = [ln for ln in r.log().splitlines() if "client-chosen routing ids" in ln]
    if STOCK:
        assert len(warned) == 1 and "WARNING" in warned[0], r.log()
        assert "scripts/build-hardened-libzmq" in warned[0]
    else:
        assert warned == [], warned


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return resp.read().decode()
    except (OSError, socket.timeout):
        return None
