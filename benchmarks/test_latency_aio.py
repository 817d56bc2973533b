"""Per-operation latency of the asyncio SDK (router.aio) against a live router: the
operations of test_latency.py, awaited.

    pytest benchmarks/test_latency_aio.py

One router and one event loop for the module; the clients are made in that loop once,
and each round is ``loop.run_until_complete(one operation)``, so a round includes the
loop's own start and stop (a few microseconds) on top of what an application that is
already inside the loop would see.
"""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.latency.live import (
    ECHO_SERVICE, OP_TIMEOUT, PAYLOAD, measure, start_echo_worker, start_router,
    stop_router, stop_worker, wait_for_service,
)
from router.aio import AsyncEndpoint, AsyncSender
from router.protocol import ErrorCode, MsgClass, Status

pytestmark = pytest.mark.timeout(300)

CHANNEL = "order:2"
MEMBERS = ("user:8", "merchant:882", "rider:43")


class LiveAio:
    """The module's router, event loop and asyncio clients (as test_latency.Live)."""

    def __init__(self) -> None:
        self.router = start_router()
        self.failed = False
        self.loop = asyncio.new_event_loop()
        self.run = self.loop.run_until_complete
        url = self.router.url
        self.sender = self.run(AsyncSender.connect(url, "lat-bench-aio", timeout=OP_TIMEOUT))
        self.rt, self.acc, self.be = (
            self.run(AsyncEndpoint.connect(url, [a], timeout=OP_TIMEOUT, auto_ack=False))
            for a in ("merchant:11", "merchant:12", "rider:11"))
        self.members = [self.run(AsyncEndpoint.connect(url, [a], timeout=OP_TIMEOUT,
                                                       auto_ack=False)) for a in MEMBERS]
        self.run(self.sender.join(CHANNEL, MEMBERS))
        self.worker = start_echo_worker(url, self.router.ipc_dir)
        wait_for_service(lambda: self.run(self.sender.request(ECHO_SERVICE, b"", ttl_ms=500)))
        self.pids = (self.router.pid, self.worker.pid)

    def close(self) -> None:
        for c in (self.sender, self.rt, self.acc, self.be, *self.members):
            self.run(c.close())
        self.loop.close()
        stop_worker(self.worker)
        stop_router(self.router, self.failed)


@pytest.fixture(scope="module")
def live():
    lv = LiveAio()
    yield lv
    lv.close()


@pytest.fixture(autouse=True)
def _mark_failures(request, live):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        live.failed = True


async def received(ep: AsyncEndpoint, what: str):
    """The endpoint's next delivery; a TimeoutError when none comes in time."""
    d = await ep.recv(timeout=OP_TIMEOUT)
    if d is None:
        raise TimeoutError(f"{what}: no delivery within {OP_TIMEOUT}s")
    return d


def test_aio_round_trip(benchmark, live):
    """Reliable send -> receive and ack -> DELIVERED back, awaited."""
    s, ep = live.sender, live.rt

    async def round_trip():
        mid = await s.send("merchant:11", PAYLOAD, msg_class=MsgClass.ORDER)
        ep.ack(await received(ep, "round trip"))
        r = await s.wait(mid, Status.DELIVERED, timeout=OP_TIMEOUT)
        assert r.status == Status.DELIVERED, r

    measure(benchmark, lambda: live.run(round_trip()), pids=live.pids)


def test_aio_accepted(benchmark, live):
    """Reliable send -> ACCEPTED, awaited; delivery, ack and DELIVERED untimed."""
    s, ep = live.sender, live.acc
    last = []

    async def accepted():
        mid = await s.send("merchant:12", PAYLOAD, msg_class=MsgClass.ORDER)
        r = await s.wait(mid, Status.ACCEPTED, timeout=OP_TIMEOUT)
        assert r.status in (Status.ACCEPTED, Status.DELIVERED), r
        last.append(mid)

    async def settle():
        ep.ack(await received(ep, "accepted (settling)"))
        await s.wait(last.pop(), Status.DELIVERED, timeout=OP_TIMEOUT)

    measure(benchmark, lambda: live.run(accepted()), teardown=lambda: live.run(settle()),
            pids=live.pids)


def test_aio_best_effort(benchmark, live):
    """Best-effort (NOTICE) send -> received, awaited."""
    s, ep = live.sender, live.be

    async def one_way():
        await s.send("rider:11", PAYLOAD, msg_class=MsgClass.NOTICE)
        await received(ep, "best effort")

    measure(benchmark, lambda: live.run(one_way()), pids=live.pids)


def test_aio_fanout(benchmark, live):
    """Reliable send to a 3-member channel -> all three receive and ack -> DELIVERED."""
    s, members = live.sender, live.members

    async def fanout():
        mid = await s.send(CHANNEL, PAYLOAD, msg_class=MsgClass.CHAT, channel=True)
        for m in members:
            m.ack(await received(m, "fan-out"))
        r = await s.wait(mid, Status.DELIVERED, timeout=OP_TIMEOUT)
        assert r.status == Status.DELIVERED, r

    measure(benchmark, lambda: live.run(fanout()), pids=live.pids)


def test_aio_request_reply(benchmark, live):
    """Request -> echo ServiceWorker (another process) -> reply, awaited."""
    s = live.sender

    async def request():
        rep = await s.request(ECHO_SERVICE, PAYLOAD, ttl_ms=int(OP_TIMEOUT * 1000))
        assert rep.code == ErrorCode.NONE and rep.payload == PAYLOAD, rep

    measure(benchmark, lambda: live.run(request()), pids=live.pids)
