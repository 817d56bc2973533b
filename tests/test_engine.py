"""The client engine (router.engine) against real routers: the connection lives on its
own thread, so a flooded or busy application never goes silent; a router restart is
survived without loss; an outage fills max_pending and then refuses; the blocking and
asyncio clients behave the same; and the process maps one libzmq."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import pytest

from router.aio import AsyncEndpoint, AsyncSender
from router.client import Endpoint, PendingLimitError, Sender
from router.protocol import MsgClass, Status
from support import RouterProcess, drain, free_port, wait_until
from workers.service import ServiceWorker

FAST = ("--heartbeat-ms", "500", "--liveness", "3")


def test_a_flooded_endpoint_that_does_not_read_is_never_dropped(make_router):
    # 200,000 best-effort messages while the application sleeps 4 s (eight heartbeat
    # timeouts of this router): the engine keeps heartbeating and reading.
    router = make_router(*FAST)
    with Endpoint(router.url, ["user:1"]) as ep, Sender(router.url, "flood") as s:
        for i in range(200_000):
            s.send("user:1", b"x" * 100, msg_class=MsgClass.NOTICE)
        time.sleep(4.0)
        got = 0
        while (batch := ep.recv_many(10_000, timeout=3.0)):
            got += len(batch)
        assert ep.stats()["disconnects"] == 0
        assert ep.stats()["hellos"] == 1
    assert "peer disconnected: user:1 (heartbeat timeout" not in router.log()
    assert got == 200_000


def _take(ep: Endpoint, n: int, timeout: float = 5.0) -> list:
    """At least ``n`` deliveries (they may come in more than one batch)."""
    got: list = []

    def enough() -> bool:
        got.extend(ep.recv_many(100, timeout=0.1))
        return len(got) >= n

    wait_until(enough, timeout, f"{n} deliveries")
    return got


def test_a_redelivery_of_what_the_application_holds_unacked_is_not_acked(make_router):
    """The router redelivers a window the application has not acked yet (it is still
    working on it); the engine drops the copies but must not ack them on the
    application's behalf: DELIVERED comes only after the application's own ack, and a
    party that reconnects without acking gets the messages again."""
    router = make_router("--retry-ms", "200", "--retry-max-ms", "400")
    with Sender(router.url, "orders") as s:
        with Endpoint(router.url, ["merchant:9"], auto_ack=False) as ep:
            ids = [s.send("merchant:9", {"n": n}) for n in range(3)]
            got = _take(ep, 3)
            assert [d.seq for d in got] == [1, 2, 3]
            wait_until(lambda: ep.duplicates >= 3, 10, "a redelivery of the window")
            s.poll(0.5)
            assert all(s.status(m).status == Status.ACCEPTED for m in ids)
            ep.ack(got[0])
            assert s.wait(ids[0], Status.DELIVERED, timeout=5).status == Status.DELIVERED
            time.sleep(0.5)
            assert s.status(ids[1]).status == Status.ACCEPTED
        with Endpoint(router.url, ["merchant:9"]) as again:  # back, 2 and 3 unacked
            assert [d.seq for d in _take(again, 2)] == [2, 3]


def test_a_handler_that_blocks_for_10_s_keeps_its_worker_connected(make_router):
    router = make_router(*FAST)
    started = threading.Event()

    def slow(body: bytes) -> bytes:
        started.set()
        time.sleep(10)
        return b"done:" + body

    worker = ServiceWorker(router.url, "slow", slow)
    stop = threading.Event()
    t = threading.Thread(target=worker.run, args=(stop.is_set,), daemon=True)
    t.start()
    try:
        with Sender(router.url, "asker") as s:
            reply = s.request("slow", b"1", ttl_ms=20_000)
            assert reply.payload == b"done:1"
        assert started.is_set()
        assert "heartbeat timeout" not in router.log()
        assert worker.stats()["disconnects"] == 0
    finally:
        stop.set()
        t.join(5)
        worker.close()


def test_router_sigkill_under_load_loses_nothing_accepted_and_clients_return_fast():
    router = RouterProcess(*FAST).start()
    url = router.url
    accepted: set[int] = set()
    got: list[int] = []
    events: list[tuple[float, str]] = []

    def on_receipt(r):
        if r.status in (Status.ACCEPTED, Status.DELIVERED):
            accepted.add(r.msg_id)

    try:
        with Endpoint(url, ["rider:1"], on_event=lambda e: events.append((time.monotonic(), e))) as ep, \
                Sender(url, "orders", on_receipt=on_receipt, max_pending=5_000) as s:
            sent = []

            def produce(n: int) -> None:
                for _ in range(n):
                    sent.append(s.send("rider:1", b"o", msg_class=MsgClass.ORDER))
                    s.poll()

            def consume(seconds: float) -> None:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    for d in ep.recv_many(1000, timeout=0.1):
                        got.append(d.msg_id)
                        ep.ack(d)

            produce(3_000)
            consume(0.5)
            router.kill()
            killed_at = time.monotonic()
            produce(500)  # into the outage: held by the engine until the router is back
            time.sleep(1.0)
            router.restart()
            serving_at = time.monotonic()  # restart() returns once it answers a HELLO
            # events reach on_event when the application takes them: poll often
            wait_until(lambda: ep.poll() * 0 or any(e == "reconnected" and at > killed_at
                                                    for at, e in events),
                       5, "the endpoint to reconnect", interval=0.005)
            back = min(at for at, e in events if e == "reconnected" and at > killed_at)
            reconnect_s = max(back - serving_at, 0.0)
            assert s.flush(20) == 0
            consume(3.0)
            s.poll()
    finally:
        router.stop(signal.SIGKILL)
        router.remove_files()
    print(f"\nreconnected {reconnect_s * 1000:.0f} ms after the restarted router was serving")
    assert not s.errors and not ep.errors, (list(s.errors), list(ep.errors))  # no NOT_READY storm
    assert accepted <= set(got), f"{len(accepted - set(got))} accepted messages never delivered"
    assert len(set(got)) == len(sent)
    assert reconnect_s < 0.25


def test_an_outage_fills_max_pending_then_send_raises():
    url = f"tcp://127.0.0.1:{free_port()}"  # nobody listens
    with Sender(url, "svc", wait=False, max_pending=50, send_timeout=0.3) as s:
        for i in range(50):
            s.send("user:1", b"x")
        assert s.pending == 50
        t0 = time.monotonic()
        with pytest.raises(PendingLimitError, match="50 reliable messages"):
            s.send("user:1", b"x")
        assert 0.25 <= time.monotonic() - t0 < 2.0
        s.send("user:1", b"best effort is not bounded", msg_class=MsgClass.NOTICE)


def _batch_messages() -> list:
    """A send_many batch the native path takes whole, except where the Python path must
    encode: a dict (JSON) and a payload over compress_above (lz4)."""
    msgs = [("merchant:6", b"plain %d" % i) for i in range(2500)]
    msgs[700] = ("merchant:6", {"json": 700})
    msgs[1400] = ("merchant:6", b"z" * 5000)
    return msgs


def _check_batch(got: list, ids: list[int], msgs: list) -> None:
    assert len(set(ids)) == len(ids) == len(msgs)
    assert [d.msg_id for d in got] == ids       # in order, each once
    assert [d.seq for d in got] == list(range(1, len(msgs) + 1))
    assert got[0].payload == b"plain 0" and got[700].payload == b'{"json":700}'
    assert got[1400].payload == b"z" * 5000
    assert {(d.kind, d.order) for d in got} == {("order.batch", "order:77")}


def test_send_many_queues_a_batch_in_order_through_the_native_path(make_router):
    router = make_router()
    msgs = _batch_messages()
    with Endpoint(router.url, ["merchant:6"]) as m, \
            Sender(router.url, "batcher", compress_above=1024) as s:
        ids = s.send_many(iter(msgs), kind="order.batch", order=77)
        got: list = []
        for _ in range(200):       # bounded: 2,500 deliveries in batches
            got += m.recv_many(1000, timeout=0.2)
            if got:
                m.ack(got[-1])
            if len(got) >= len(msgs):
                break
        _check_batch(got, ids, msgs)
        assert s.wait(ids[-1], Status.DELIVERED, timeout=5).status == Status.DELIVERED
        with pytest.raises(ValueError, match="target"):
            s.send_many([("merchant:6", b"a"), ("merchant:6", b"b"), ("no-colon", b"c"),
                         ("merchant:6", b"d")], kind="order.batch", order=77)
        after = drain(m, 2)                                  # those before the bad one
        assert [d.payload for d in after] == [b"a", b"b"]
        assert m.recv(timeout=0.3) is None                   # and none after it


def test_async_send_many_queues_the_same_batch(make_router):
    router = make_router()
    msgs = _batch_messages()

    async def main():
        async with await AsyncEndpoint.connect(router.url, ["merchant:6"]) as m, \
                await AsyncSender.connect(router.url, "batcher", compress_above=1024) as s:
            ids = await s.send_many(msgs, kind="order.batch", order=77)
            got: list = []
            for _ in range(200):
                got += await m.recv_many(1000, timeout=0.2)
                if got:
                    m.ack(got[-1])
                if len(got) >= len(msgs):
                    break
            return ids, got

    ids, got = asyncio.run(main())
    _check_batch(got, ids, msgs)


def test_send_many_in_an_outage_fills_max_pending_then_raises():
    url = f"tcp://127.0.0.1:{free_port()}"  # nobody listens
    with Sender(url, "svc", wait=False, max_pending=50, send_timeout=0.3) as s:
        t0 = time.monotonic()
        with pytest.raises(PendingLimitError, match="50 reliable messages"):
            s.send_many([("user:1", b"x")] * 80)
        assert 0.25 <= time.monotonic() - t0 < 2.0
        assert s.pending == 50
        assert len(s.send_many([("user:1", b"n")] * 80, msg_class=MsgClass.NOTICE)) == 80

    async def main():
        a = AsyncSender(url, "svc", max_pending=50, send_timeout=0.3)  # not waiting
        try:
            t0 = time.monotonic()
            with pytest.raises(PendingLimitError, match="50 reliable messages"):
                await a.send_many([("user:1", b"x")] * 80)
            return time.monotonic() - t0, a.pending
        finally:
            await a.close(bye=False)

    waited, pending = asyncio.run(main())
    assert 0.25 <= waited < 2.0 and pending == 50


def test_sends_queued_in_an_outage_go_once_the_router_starts(make_router):
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    with Sender(url, "early", wait=False) as s:
        mids = [s.send("user:9", {"i": i}) for i in range(20)]
        router = make_router("--bind", url)
        with Endpoint(url, ["user:9"]) as ep:
            got = [ep.recv(timeout=5) for _ in range(20)]
            assert [d.msg_id for d in got] == mids
            ep.ack(got[-1])
            assert s.wait(mids[-1], Status.DELIVERED, timeout=5).status == Status.DELIVERED
    assert router.running


def scenario_blocking(url: str) -> dict:
    out = {}
    with Endpoint(url, ["merchant:5"]) as m, Sender(url, "svc") as s:
        mid = s.send("merchant:5", {"order": 1}, kind="order.created", order=1)
        d = m.recv(timeout=2)
        m.ack(d)
        out["delivery"] = (d.address, d.seq, d.kind, d.sender, d.order, d.payload)
        out["status"] = s.wait(mid, Status.DELIVERED, timeout=2).status
        reply_mid = m.send("user:5", b"confirmed")  # an endpoint sends on its own connection
        out["reply_pending"] = m.flush(2)
        out["reply_status"] = m.wait(reply_mid, Status.ACCEPTED, timeout=2).status
        with pytest.raises(ValueError, match="target"):
            s.send("no-colon", b"x")
        with pytest.raises(TimeoutError, match="last receipt: ACCEPTED"):
            m.wait(reply_mid, Status.DELIVERED, timeout=0.2)
    return out


async def scenario_async(url: str) -> dict:
    out = {}
    async with await AsyncEndpoint.connect(url, ["merchant:5"]) as m, \
            await AsyncSender.connect(url, "svc") as s:
        mid = await s.send("merchant:5", {"order": 1}, kind="order.created", order=1)
        d = await m.recv(timeout=2)
        m.ack(d)
        out["delivery"] = (d.address, d.seq, d.kind, d.sender, d.order, d.payload)
        out["status"] = (await s.wait(mid, Status.DELIVERED, timeout=2)).status
        reply_mid = await m.send("user:5", b"confirmed")
        out["reply_pending"] = await m.flush(2)
        out["reply_status"] = (await m.wait(reply_mid, Status.ACCEPTED, timeout=2)).status
        with pytest.raises(ValueError, match="target"):
            await s.send("no-colon", b"x")
        with pytest.raises(TimeoutError, match="last receipt: ACCEPTED"):
            await m.wait(reply_mid, Status.DELIVERED, timeout=0.2)
    return out


def test_blocking_and_asyncio_clients_behave_the_same(make_router):
    a = scenario_blocking(make_router().url)
    b = asyncio.run(scenario_async(make_router().url))
    assert a == b
    assert a["status"] == Status.DELIVERED and a["reply_pending"] == 0
    assert a["delivery"][:5] == ("merchant:5", 1, "order.created", "svc", "order:1")


def test_one_libzmq_is_mapped_with_the_router_core_and_the_engine_loaded(make_router):
    import importlib
    importlib.import_module("router.core")  # the router's native core in this process too
    with Sender(make_router().url, "maps"):
        maps = open("/proc/self/maps").read()
    libs = {line.split()[-1] for line in maps.splitlines() if "libzmq" in line}
    assert len(libs) == 1, libs
