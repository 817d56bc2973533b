"""The asyncio SDK against a real router."""

from __future__ import annotations

import asyncio

import pytest

from router.aio import AsyncEndpoint, AsyncSender
from router.protocol import MsgClass, Status
from router.session import RouterUnavailable, payload_json
from support import free_port


def test_async_round_trip_and_iteration(url):
    async def main():
        user = await AsyncEndpoint.connect(url, ["user:7"])
        svc = await AsyncSender.connect(url, "orders")
        ids = [await svc.send("user:7", {"n": i}, kind="order.accepted") for i in range(10)]
        got = []
        async for d in user:
            got.append(payload_json(d)["n"])
            if len(got) == 10:
                user.ack(d)
                break
        await user.flush()
        receipts = [await svc.wait(mid, Status.DELIVERED, timeout=5) for mid in ids]
        await svc.close()
        await user.close()
        return got, receipts

    got, receipts = asyncio.run(asyncio.wait_for(main(), 20))
    assert got == list(range(10))
    assert {r.status for r in receipts} == {Status.DELIVERED}


def test_async_channel_and_receipt_stream(router):
    async def main():
        a = await AsyncEndpoint.connect(router.url, ["user:1"])
        b = await AsyncEndpoint.connect(router.url, ["merchant:1"])
        svc = await AsyncSender.connect(router.url, "chat-svc")
        await svc.join("order:9", ["user:1", "merchant:1"])
        mid = await svc.send("order:9", "where is my food", channel=True, msg_class=MsgClass.CHAT)
        da, db = await a.recv(5), await b.recv(5)
        a.ack(da)
        b.ack(db)
        await a.flush()
        await b.flush()
        statuses = []
        async for r in svc.receipts():
            statuses.append(r.status)
            if r.status == Status.DELIVERED:
                break
        for c in (svc, a, b):
            await c.close()
        return da, db, statuses, mid

    da, db, statuses, mid = asyncio.run(asyncio.wait_for(main(), 20))
    assert da.payload == db.payload == b"where is my food"
    assert statuses == [Status.ACCEPTED, Status.DELIVERED]


def test_async_connect_times_out_clearly():
    async def main():
        await AsyncSender.connect(f"tcp://127.0.0.1:{free_port()}", "x", timeout=0.3)

    with pytest.raises(RouterUnavailable, match="router serve"):
        asyncio.run(main())


def test_async_request_to_a_service(router):
    import threading

    from workers.service import ServiceWorker

    w = ServiceWorker(router.url, "upper", lambda b: b.upper())
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop.is_set,))
    t.start()

    async def main():
        svc = await AsyncSender.connect(router.url, "client")
        r = await svc.request("upper", b"no scallions", ttl_ms=3000)
        missing = await svc.request("nobody", b"x", ttl_ms=200)
        await svc.close()
        return r, missing

    try:
        r, missing = asyncio.run(asyncio.wait_for(main(), 20))
    finally:
        stop.set()
        t.join()
        w.close()
    assert r.payload == b"NO SCALLIONS"
    assert missing.code.name == "NO_SERVICE"


def test_async_worker_serves_concurrently_and_acks_deliveries(router):
    from router.protocol import MsgClass, Status
    from workers.service_aio import AsyncServiceWorker

    slow_started = asyncio.Event()

    async def handler(body: bytes) -> bytes:
        if body == b"slow":
            slow_started.set()
            await asyncio.sleep(0.5)  # holds one credit; the other requests go on
        if body == b"bad":
            raise ValueError("no such dish")
        return body.upper()

    async def main():
        seen = []
        w = await AsyncServiceWorker.connect(router.url, "menu", handler, credit=4,
                                             addresses=["zone:3"], on_delivery=seen.append)
        svc = await AsyncSender.connect(router.url, "client")
        t0 = asyncio.get_running_loop().time()
        slow = asyncio.create_task(svc.request("menu", b"slow", ttl_ms=3000))
        await asyncio.wait_for(slow_started.wait(), 5)  # the worker is on it
        fast = await svc.request("menu", b"noodles", ttl_ms=3000)
        fast_at = asyncio.get_running_loop().time() - t0
        bad = await svc.request("menu", b"bad", ttl_ms=3000)
        mid = await svc.send("zone:3", {"rider": 42}, msg_class=MsgClass.DISPATCH)
        delivered = await svc.wait(mid, Status.DELIVERED, timeout=5)
        replies = (await slow, fast, bad)
        await svc.close()
        await w.close()
        return replies, fast_at, seen, delivered

    (slow, fast, bad), fast_at, seen, delivered = asyncio.run(asyncio.wait_for(main(), 20))
    assert (slow.payload, fast.payload) == (b"SLOW", b"NOODLES")
    assert fast_at < 0.4  # answered while the slow one was still running
    assert bad.code.name == "WORKER_FAILED" and b"ValueError: no such dish" in bad.payload
    assert [d.seq for d in seen] == [1]
    assert delivered.status == Status.DELIVERED
