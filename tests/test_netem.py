"""Tests of the fault-injecting proxy itself, against a plain TCP echo server and pyzmq."""

from __future__ import annotations

import random
import socket
import socketserver
import statistics
import struct
import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from netem import MOBILE_PROFILE, DelayProfile, FaultProxy
from support import wait_until


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:
            pass  # the proxy resets connections on purpose


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """A threaded TCP echo server on 127.0.0.1."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server.server_address
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo) -> Iterator[FaultProxy]:
    with FaultProxy(echo, seed=1) as p:
        yield p


def connect(proxy: FaultProxy, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one send = one chunk
    return sock


def recv_exact(sock: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    """Exactly ``n`` bytes within ``timeout``; fails on EOF or timeout."""
    buf, deadline = bytearray(), time.monotonic() + timeout
    while len(buf) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"got {len(buf)} of {n} bytes in {timeout}s"
        sock.settimeout(left)
        chunk = sock.recv(n - len(buf))
        assert chunk, f"EOF after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


def sees_reset_or_eof(sock: socket.socket, timeout: float = 3.0) -> bool:
    """True once the connection reports RST or EOF; False if it is still open at timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
    return False


def refused(proxy: FaultProxy) -> bool:
    """True if a new connection is reset at once (during connect() or on first read)."""
    try:
        sock = connect(proxy)
    except ConnectionError:
        return True
    with sock:
        return sees_reset_or_eof(sock)


def test_pass_through_many_connections(proxy):
    socks = [connect(proxy) for _ in range(20)]
    for i in range(100):
        for s in socks:
            s.sendall(b"msg-%05d" % i)
        for s in socks:
            assert recv_exact(s, 9) == b"msg-%05d" % i
    for s in socks:
        s.close()
    c = proxy.counters
    assert c.accepted == 20
    assert c.bytes_up == c.bytes_down == 20 * 100 * 9
    wait_until(lambda: proxy.counters.active == 0, 3.0, "no active connection left")
    assert proxy.counters.closed == 20


def test_profile_percentiles():
    rng = random.Random(7)
    samples = sorted(MOBILE_PROFILE.sample_rtt(rng) for _ in range(200_000))
    pct = lambda q: samples[int(q * len(samples))]
    assert pct(0.50) == pytest.approx(0.350, rel=0.05)
    assert pct(0.95) == pytest.approx(0.725, rel=0.05)
    assert pct(0.99) == pytest.approx(2.3, rel=0.08)
    assert samples[-1] <= MOBILE_PROFILE.cap
    one_way = [MOBILE_PROFILE.sample_one_way(rng) for _ in range(20_000)]
    assert statistics.median(one_way) == pytest.approx(0.175, rel=0.05)
    # The splice is exact at the anchors.
    for q, x in [(0.5, 0.35), (0.95, 0.725), (0.99, 2.3)]:
        assert MOBILE_PROFILE.quantile(q) == pytest.approx(x)
    assert DelayProfile.constant(0.1).sample_rtt(rng) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        DelayProfile(p50=1.0, p95=0.5, p99=2.0)


def test_delay_applies_to_round_trips(proxy):
    proxy.time_scale = 0.05  # RTT p50 17.5 ms
    proxy.set_delay(MOBILE_PROFILE)
    with connect(proxy) as s:
        rtts = []
        for i in range(40):
            t0 = time.monotonic()
            s.sendall(b"x")
            recv_exact(s, 1)
            rtts.append(time.monotonic() - t0)
    # Sum of two one-way halves: median near the profile's 17.5 ms, loose for CI noise.
    assert 0.010 < statistics.median(rtts) < 0.040
    assert min(rtts) > 0.003


def test_order_preserved_under_jitter(proxy):
    proxy.time_scale = 0.1  # one-way jitter roughly 5 ms .. 300 ms per chunk
    proxy.set_delay(MOBILE_PROFILE)
    socks = [connect(proxy) for _ in range(4)]
    sent = [bytearray() for _ in socks]
    for i in range(150):
        for s, buf in zip(socks, sent):
            msg = b"%06d;" % i
            s.sendall(msg)
            buf += msg
        time.sleep(0.002)  # separate chunks, each with its own delay draw
    for s, buf in zip(socks, sent):
        assert recv_exact(s, len(buf), timeout=10) == bytes(buf)
        s.close()


def test_bandwidth_cap(proxy):
    rate, size = 250_000, 125_000
    proxy.set_bandwidth(rate)
    payload = random.Random(3).randbytes(size)
    with connect(proxy) as s:
        t0 = time.monotonic()
        s.sendall(payload)
        assert recv_exact(s, size, timeout=5) == payload
        elapsed = time.monotonic() - t0
    # Up and down are pipelined, so ~size/rate in total, minus the initial burst.
    assert 0.4 < elapsed < 1.5, elapsed
    proxy.set_bandwidth(None)
    with connect(proxy) as s:
        t0 = time.monotonic()
        s.sendall(payload)
        recv_exact(s, size)
        assert time.monotonic() - t0 < 0.3


def test_stall_buffers_then_unstall_delivers(proxy):
    with connect(proxy) as s:
        s.sendall(b"before")
        assert recv_exact(s, 6) == b"before"
        proxy.stall()
        assert proxy.stalled
        before = proxy.counters
        payload = random.Random(5).randbytes(20_000)
        s.sendall(payload)
        late = connect(proxy)  # accepted by the kernel, but nothing flows yet
        late.sendall(b"late")
        assert not sees_reset_or_eof(s, timeout=0.5)  # open, silent: a blackhole
        assert proxy.counters.bytes_up == before.bytes_up
        proxy.unstall()
        assert recv_exact(s, len(payload)) == payload
        assert recv_exact(late, 4) == b"late"
        late.close()


def test_stall_one_direction(proxy):
    with connect(proxy) as s:
        s.sendall(b"x")
        recv_exact(s, 1)
        proxy.stall("down")
        s.sendall(b"ping")
        wait_until(lambda: proxy.counters.bytes_up == 5, 3.0, "5 bytes up")  # up still flows
        assert not sees_reset_or_eof(s, timeout=0.3)  # the echo is held back
        proxy.unstall("down")
        assert recv_exact(s, 4) == b"ping"


def test_reset_all_resets_clients(proxy):
    socks = [connect(proxy) for _ in range(3)]
    for s in socks:
        s.sendall(b"hi")
        assert recv_exact(s, 2) == b"hi"
    assert proxy.reset_all() == 3
    for s in socks:
        with pytest.raises(ConnectionResetError):
            s.settimeout(3)
            s.recv(10)
        s.close()
    c = proxy.counters
    assert (c.resets, c.active) == (3, 0)
    with connect(proxy) as s:  # the proxy itself keeps working
        s.sendall(b"again")
        assert recv_exact(s, 5) == b"again"


def test_outage_refuses_then_recovers(proxy):
    old = connect(proxy)
    old.sendall(b"x")
    recv_exact(old, 1)
    proxy.outage(0.6)
    assert proxy.in_outage
    assert sees_reset_or_eof(old)
    old.close()
    assert refused(proxy)
    assert proxy.counters.refused >= 1
    wait_until(lambda: not proxy.in_outage, 2, "the outage to end")
    with connect(proxy) as s:
        s.sendall(b"back")
        assert recv_exact(s, 4) == b"back"


def test_peer_reset_is_propagated(proxy):
    with connect(proxy) as s:
        s.sendall(b"x")
        recv_exact(s, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
    wait_until(lambda: proxy.counters.peer_resets == 1, 3.0, "one peer reset")


def test_zmq_dealer_router_through_faults():
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    dealer = ctx.socket(zmq.DEALER)
    for sock in (router, dealer):
        sock.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        with FaultProxy(f"tcp://127.0.0.1:{port}", time_scale=0.05, seed=2) as net:
            net.set_delay(MOBILE_PROFILE)
            dealer.connect(net.url)
            for i in range(200):
                dealer.send(b"%d" % i)
            got = []
            while len(got) < 200:
                assert router.poll(5000), f"only {len(got)} of 200 arrived"
                ident, body = router.recv_multipart()
                got.append(int(body))
            assert got == list(range(200))
            router.send_multipart([ident, b"reply"])
            assert dealer.poll(5000) and dealer.recv() == b"reply"

            # After a reset zmq reconnects by itself; keep pinging until one gets through.
            assert net.reset_all() == 1
            deadline = time.monotonic() + 5
            while not router.poll(100):
                assert time.monotonic() < deadline, "no message after reconnect"
                dealer.send(b"ping")
            assert router.recv_multipart()[1] == b"ping"
            assert net.counters.accepted >= 2
    finally:
        dealer.close()
        router.close()
