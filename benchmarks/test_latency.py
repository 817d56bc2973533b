"""Per-operation latency of the blocking SDK against a live router, one operation per
pytest-benchmark round.

    pytest benchmarks/test_latency.py                      # ~1 min
    pytest benchmarks/test_latency.py benchmarks/test_latency_aio.py \\
        --benchmark-autosave                               # save a run to compare against
    pytest benchmarks/test_latency.py benchmarks/test_latency_aio.py \\
        --benchmark-compare --benchmark-compare-fail=median:10%

One ``router serve`` for the module (real tcp sockets on 127.0.0.1, journal and fsync on,
order history on), started before the first benchmark; clients connect once and are
reused by every round. Each round is one operation as an application sees it, so
pytest-benchmark's min/median/IQR/outliers/histogram are its latency distribution;
extra_info adds p99/p99.9 and the machine's load (benchmarks/latency/live.py).
"""

from __future__ import annotations

import pytest

from benchmarks.latency.live import (
    ECHO_SERVICE, OP_TIMEOUT, PAYLOAD, measure, start_echo_worker, start_router,
    stop_router, stop_worker, wait_for_service,
)
from router.client import Endpoint, Sender
from router.protocol import ErrorCode, MsgClass, Status

pytestmark = pytest.mark.timeout(300)

#: The channel of the fan-out benchmark and its three members.
CHANNEL = "order:1"
MEMBERS = ("user:7", "merchant:881", "rider:42")


class Live:
    """The module's router and clients: one sender, one endpoint per benchmark's
    address (so no benchmark sees another's deliveries), three channel members and an
    echo worker process."""

    def __init__(self) -> None:
        self.router = start_router()
        self.failed = False
        url = self.router.url
        self.sender = Sender(url, "lat-bench", timeout=OP_TIMEOUT)
        self.rt = Endpoint(url, ["merchant:1"], timeout=OP_TIMEOUT)
        self.acc = Endpoint(url, ["merchant:2"], timeout=OP_TIMEOUT)
        self.be = Endpoint(url, ["rider:1"], timeout=OP_TIMEOUT)
        self.members = [Endpoint(url, [a], timeout=OP_TIMEOUT) for a in MEMBERS]
        self.sender.join(CHANNEL, MEMBERS)
        self.worker = start_echo_worker(url, self.router.ipc_dir)
        wait_for_service(lambda: self.sender.request(ECHO_SERVICE, b"", ttl_ms=500))
        self.pids = (self.router.pid, self.worker.pid)

    def close(self) -> None:
        for c in (self.sender, self.rt, self.acc, self.be, *self.members):
            c.close()
        stop_worker(self.worker)
        stop_router(self.router, self.failed)


@pytest.fixture(scope="module")
def live():
    lv = Live()
    yield lv
    lv.close()


@pytest.fixture(autouse=True)
def _mark_failures(request, live):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        live.failed = True


def received(ep: Endpoint, what: str):
    """The endpoint's next delivery; a TimeoutError when none comes in time."""
    d = ep.recv(timeout=OP_TIMEOUT)
    if d is None:
        raise TimeoutError(f"{what}: no delivery within {OP_TIMEOUT}s")
    return d


def test_round_trip(benchmark, live):
    """Reliable send -> the endpoint receives and acks -> DELIVERED back at the sender."""
    s, ep = live.sender, live.rt

    def round_trip():
        mid = s.send("merchant:1", PAYLOAD, msg_class=MsgClass.ORDER)
        ep.ack(received(ep, "round trip"))
        r = s.wait(mid, Status.DELIVERED, timeout=OP_TIMEOUT)
        assert r.status == Status.DELIVERED, r

    measure(benchmark, round_trip, pids=live.pids)


def test_accepted(benchmark, live):
    """Reliable send -> ACCEPTED (journaled, fsynced) back at the sender. The delivery
    is received, acked and DELIVERED between rounds, untimed."""
    s, ep = live.sender, live.acc
    last = []

    def accepted():
        mid = s.send("merchant:2", PAYLOAD, msg_class=MsgClass.ORDER)
        r = s.wait(mid, Status.ACCEPTED, timeout=OP_TIMEOUT)
        assert r.status in (Status.ACCEPTED, Status.DELIVERED), r
        last.append(mid)

    def settle():
        ep.ack(received(ep, "accepted (settling)"))
        s.wait(last.pop(), Status.DELIVERED, timeout=OP_TIMEOUT)

    measure(benchmark, accepted, teardown=settle, pids=live.pids)


def test_best_effort(benchmark, live):
    """Best-effort (NOTICE) send -> the endpoint receives it: one way, no receipts."""
    s, ep = live.sender, live.be

    def one_way():
        s.send("rider:1", PAYLOAD, msg_class=MsgClass.NOTICE)
        received(ep, "best effort")

    measure(benchmark, one_way, pids=live.pids)


def test_fanout(benchmark, live):
    """Reliable send to a 3-member channel -> every member receives and acks ->
    DELIVERED back (the router sends it once all three acked)."""
    s, members = live.sender, live.members

    def fanout():
        mid = s.send(CHANNEL, PAYLOAD, msg_class=MsgClass.CHAT, channel=True)
        for m in members:
            m.ack(received(m, "fan-out"))
        r = s.wait(mid, Status.DELIVERED, timeout=OP_TIMEOUT)
        assert r.status == Status.DELIVERED, r

    measure(benchmark, fanout, pids=live.pids)


def test_request_reply(benchmark, live):
    """Request to a service -> the router hands it to the echo ServiceWorker (another
    process) -> its reply back at the requester."""
    s = live.sender

    def request():
        rep = s.request(ECHO_SERVICE, PAYLOAD, ttl_ms=int(OP_TIMEOUT * 1000))
        assert rep.code == ErrorCode.NONE and rep.payload == PAYLOAD, rep

    measure(benchmark, request, pids=live.pids)
