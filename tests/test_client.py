"""The blocking and asyncio SDKs: prompt acks, address checks, order history links,
and router ERRORs surfaced (at connect, and after it through ``on_error``)."""

from __future__ import annotations

import asyncio
import time

import pytest
import zmq

from router import protocol as P
from router.aio import AsyncEndpoint, AsyncSender
from router.client import Endpoint, Sender
from router.protocol import ErrorCode, MsgClass, Status
from router.session import RouterError, check_address, order_ref
from support import free_port, wait_until


class FakeRouter:
    """A ROUTER socket speaking just enough of the protocol to watch what a client
    sends: WELCOME, DELIVERs and ERRORs written by the test."""

    def __init__(self) -> None:
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.url = f"tcp://127.0.0.1:{free_port()}"
        self.sock.bind(self.url)

    def recv(self, timeout: float = 2.0) -> list[bytes] | None:
        """The next message other than a heartbeat (identity frame first)."""
        deadline = time.monotonic() + timeout
        while self.sock.poll(max(int((deadline - time.monotonic()) * 1000), 0)):
            frames = self.sock.recv_multipart()
            if frames[1][2] != P.Command.HEARTBEAT:
                return frames
        return None

    def welcome(self, identity: bytes, heartbeat_ms: int = 5000) -> None:
        self.sock.send_multipart([identity, P.prefix(P.Command.WELCOME)
                                  + P.WELCOME.pack(heartbeat_ms, 3, 1 << 20)])

    def deliver(self, identity: bytes, address: str, seq: int) -> None:
        raw = address.encode()
        hdr = (P.prefix(P.Command.DELIVER) + P.DELIVER.pack(seq, seq, 0, MsgClass.ORDER, 0, 0, 0, 0,
                                                            len(raw)) + raw)
        self.sock.send_multipart([identity, hdr, b"x"])

    def error(self, identity: bytes, code: ErrorCode, text: str) -> None:
        self.sock.send_multipart([identity, P.prefix(P.Command.ERROR) + P.ERROR.pack(code, 0),
                                  text.encode()])

    def close(self) -> None:
        self.sock.close(linger=0)


@pytest.fixture
def fake():
    f = FakeRouter()
    yield f
    f.close()


def _connect_endpoint(fake: FakeRouter, addresses, **kw) -> tuple[Endpoint, bytes]:
    """An Endpoint whose HELLO the fake router answers (the constructor waits for it)."""
    import threading

    ident: list[bytes] = []

    def answer():
        frames = fake.recv(5)
        ident.append(frames[0])
        fake.welcome(frames[0])

    t = threading.Thread(target=answer)
    t.start()
    ep = Endpoint(fake.url, addresses, **kw)
    t.join(5)
    return ep, ident[0]


def test_acks_go_at_once_and_merge_into_one_cumulative_ack(fake):
    # The engine sends an ack on its next pass without waiting for the application's
    # next call, and acks made before that pass leave as one cumulative ACK.
    ep, ident = _connect_endpoint(fake, ["merchant:1"])
    try:
        for seq in (1, 2, 3):
            fake.deliver(ident, "merchant:1", seq)
        got = [ep.recv(timeout=2) for _ in range(3)]
        assert [d.seq for d in got] == [1, 2, 3]
        ep.ack(got[0])
        frames = fake.recv(1)  # no further call into the endpoint: the engine sent it
        assert frames is not None and frames[1] == P.encode_ack([("merchant:1", 1)])
        ep.ack(got[1])
        ep.ack(got[2])
        acks = []
        while (frames := fake.recv(0.3)) is not None:
            assert frames[1][2] == P.Command.ACK
            acks.append(frames[1])
        assert 1 <= len(acks) <= 2 and acks[-1] == P.encode_ack([("merchant:1", 3)])
    finally:
        ep.close()


def test_a_redelivered_sequence_is_dropped_and_acked_again_only_once_acked(fake):
    """A redelivery of what the application holds unacked is dropped and not acked (the
    ack would report DELIVERED for what nobody processed); once the application acked
    it, a redelivery means the router lost that ack, and it is sent again."""
    ep, ident = _connect_endpoint(fake, ["merchant:1"])
    try:
        fake.deliver(ident, "merchant:1", 1)
        d = ep.recv(timeout=2)
        assert d.seq == 1
        fake.deliver(ident, "merchant:1", 1)   # the router resends what we hold
        assert ep.recv(timeout=0.3) is None
        assert fake.recv(0.5) is None           # held, not acked: no ack on its behalf
        assert ep.duplicates == 1
        ep.ack(d)
        frames = fake.recv(1)
        assert frames is not None and frames[1] == P.encode_ack([("merchant:1", 1)])
        fake.deliver(ident, "merchant:1", 1)   # that ack was lost: the router resends
        assert ep.recv(timeout=0.3) is None
        frames = fake.recv(1)
        assert frames is not None and frames[1] == P.encode_ack([("merchant:1", 1)])
        assert ep.duplicates == 2
    finally:
        ep.close()


def test_more_addresses_than_one_list_holds_go_in_hello_then_bind(fake):
    names = [f"user:{i}" for i in range(P.MAX_LIST + 10)]
    ep, ident = _connect_endpoint(fake, names, role=P.Role.GATEWAY, name="gw", timeout=10)
    try:
        frames = fake.recv(2)
        assert frames is not None and frames[1][2] == P.Command.BIND
        assert P.COUNT.unpack_from(frames[1], P.PREFIX.size)[0] == 10
        for i in (0, P.MAX_LIST + 9):   # acks for every address split the same way
            ep.ack(P.Delivery(names[i], 1, 1, 0, MsgClass.ORDER, "", "o", "", P.Flag(0), b""))
        for n in names[1:P.MAX_LIST + 9]:
            ep.ack(P.Delivery(n, 1, 1, 0, MsgClass.ORDER, "", "o", "", P.Flag(0), b""))
        counts = []
        while sum(counts) < len(names) and (frames := fake.recv(2)) is not None:
            if frames[1][2] == P.Command.ACK:
                counts.append(P.COUNT.unpack_from(frames[1], P.PREFIX.size)[0])
        assert sum(counts) == len(names) and max(counts) <= P.MAX_LIST
    finally:
        ep.close()


def test_router_error_after_welcome_reaches_on_error_and_errors(fake):
    seen: list[RouterError] = []
    ep, ident = _connect_endpoint(fake, ["user:7"], on_error=seen.append)
    try:
        fake.error(ident, ErrorCode.BAD_ADDRESS, "user:7 was taken over by another connection")
        assert ep.recv(timeout=1) is None
        assert [e.code for e in seen] == [ErrorCode.BAD_ADDRESS]
        assert list(ep.errors) == seen and "taken over" in seen[0].text
    finally:
        ep.close()


def test_hello_refused_raises_the_routers_error(make_router):
    router = make_router("--max-addresses", "1")
    t0 = time.monotonic()
    with pytest.raises(RouterError) as info:
        Endpoint(router.url, ["user:1", "user:2"], timeout=5)
    assert info.value.code == ErrorCode.ADDRESS_LIMIT
    assert time.monotonic() - t0 < 2.5  # the refusal, not the 5 s connect timeout


def test_ack_reaches_the_router_without_another_call(make_router):
    # Heartbeats every 5 s: only an ack sent by ack() itself can be DELIVERED in 1 s.
    router = make_router("--heartbeat-ms", "5000")
    with Endpoint(router.url, ["merchant:881"]) as merchant, Sender(router.url, "svc") as s:
        mid = s.send("merchant:881", {"order": 1})
        merchant.ack(merchant.recv(timeout=2))
        assert s.wait(mid, Status.DELIVERED, timeout=1.0).status == Status.DELIVERED


def test_async_ack_reaches_the_router_promptly(make_router):
    router = make_router("--heartbeat-ms", "5000")

    async def main():
        user = await AsyncEndpoint.connect(router.url, ["user:7"])
        svc = await AsyncSender.connect(router.url, "svc")
        mid = await svc.send("user:7", b"hi")
        user.ack(await user.recv(2))
        r = await svc.wait(mid, Status.DELIVERED, timeout=1.0)
        await svc.close()
        await user.close()
        return r

    assert asyncio.run(asyncio.wait_for(main(), 20)).status == Status.DELIVERED


def test_async_hello_refused_raises_the_routers_error(make_router):
    router = make_router("--max-addresses", "1")

    async def main():
        await AsyncEndpoint.connect(router.url, ["user:1", "user:2"], timeout=5)

    with pytest.raises(RouterError, match="ADDRESS_LIMIT"):
        asyncio.run(asyncio.wait_for(main(), 20))


@pytest.mark.parametrize("bad", ["merchant", "merchant:", ":881", "bad addr", "", "a:" + "x" * 300,
                                 "user:caf\u00e9"])
def test_addresses_are_kind_colon_id(bad):
    with pytest.raises(ValueError, match="address|bytes"):
        check_address(bad)
    with pytest.raises(ValueError):
        Endpoint("tcp://127.0.0.1:1", [bad], timeout=0.1)  # refused before connecting
    with Sender("tcp://127.0.0.1:1", "svc", wait=False) as s:  # checked before queueing
        with pytest.raises(ValueError, match="target"):
            s.send(bad, b"x")
        with pytest.raises(ValueError):
            s.join("order:1", ["user:1", bad])
        assert s.stats()["sent"] == 0


def test_sdk_checks_bind_and_ttl_before_sending(router):
    with Endpoint(router.url, ["user:1"]) as ep, Sender(router.url, "svc") as s:
        with pytest.raises(ValueError, match="merchant:"):
            ep.bind(["merchant:"])
        with pytest.raises(ValueError, match="ttl_ms"):
            s.send("user:1", b"x", ttl_ms=-5)
        with pytest.raises(ValueError, match="channel"):
            s.send("order 1", b"x", channel=True)
    with pytest.raises(ValueError, match="no scheme"):
        Sender("localhost:17301", "svc")


def test_order_ties_a_message_to_its_history(router):
    assert order_ref(1002) == order_ref("1002") == order_ref("order:1002") == "order:1002"
    with pytest.raises(ValueError, match="order"):
        order_ref("")
    with Endpoint(router.url, ["merchant:9"]) as m, Sender(router.url, "orders-svc") as s:
        with pytest.raises(ValueError, match="not both"):
            s.send("merchant:9", b"x", order=1, key="order:1")
        ids = [s.send("merchant:9", {"n": 1}, kind="order.created", order=1002),
               s.send("merchant:9", {"n": 2}, kind="order.accepted", order="order:1002"),
               s.send("merchant:9", {"n": 3}, kind="order.note", key="order:1002")]
        for _ in ids:
            m.ack(m.recv(timeout=2))
        for mid in ids:
            s.wait(mid, Status.DELIVERED, timeout=5)
        deadline = time.monotonic() + 5
        while True:
            events = s.history("1002")
            accepted = {e["msg_id"] for e in events if e["event"] == "accepted"}
            if accepted == set(ids) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert accepted == set(ids)


def test_receipts_dropped_before_the_application_took_them_are_reported(router, caplog):
    """More receipts waiting than ``keep_receipts``: the oldest are dropped, and the
    client says so when it next takes receipts, since their callbacks never run."""
    seen = []
    with Sender(router.url, "orders", keep_receipts=10, on_receipt=seen.append) as s, \
            Endpoint(router.url, ["merchant:77"]) as ep:
        ids = [s.send("merchant:77", {"n": n}) for n in range(30)]
        got = 0
        for _ in range(50):  # bounded: 30 deliveries in at most 50 takes
            for d in ep.recv_many(30, timeout=0.1):
                ep.ack(d)
                got += 1
            if got == 30:
                break
        ep.flush()
        wait_until(lambda: s.stats()["dropped_receipts"] > 0, 5, "receipts past the bound")
        with caplog.at_level("WARNING", logger="router.client"):
            s.poll(0.1)
        assert any("receipts were dropped" in r.message and "keep_receipts=10" in r.message
                   for r in caplog.records), caplog.text
        assert len(seen) < 2 * len(ids)  # ACCEPTED and DELIVERED for 30: not all came
