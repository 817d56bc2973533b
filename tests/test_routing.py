"""Routing through a real router process: addresses, channels, receipts, queues."""

from __future__ import annotations

import time

from router.client import Endpoint, Sender, payload_json
from router.protocol import ErrorCode, MsgClass, Role, Status

from support import drain, wait_until




def test_address_delivery_in_order_with_receipts(url):
    with Endpoint(url, ["merchant:881"]) as merchant, Sender(url, "orders") as orders:
        ids = [orders.send("merchant:881", {"order": i, "notes": "no scallions"},
                           kind="order.created") for i in range(50)]
        got = drain(merchant, 50)
        assert [payload_json(d)["order"] for d in got] == list(range(50))
        assert [d.seq for d in got] == list(range(1, 51))
        assert {d.kind for d in got} == {"order.created"}
        assert {d.sender for d in got} == {"orders"}
        for mid in ids:
            assert orders.wait(mid, Status.DELIVERED, timeout=5).status == Status.DELIVERED


def test_receipt_accepted_comes_before_delivered(router):
    with Sender(router.url, "orders") as orders:
        mid = orders.send("rider:1", b"offer", msg_class=MsgClass.DISPATCH)
        assert orders.wait(mid, Status.ACCEPTED, timeout=2).status == Status.ACCEPTED
        with Endpoint(router.url, ["rider:1"]) as rider:
            d = drain(rider, 1)[0]
            assert d.payload == b"offer" and d.msg_class == MsgClass.DISPATCH
            assert orders.wait(mid, Status.DELIVERED, timeout=2).status == Status.DELIVERED


def test_unbound_address_waits_then_gets_backlog_in_order(router):
    with Sender(router.url, "orders") as orders:
        for i in range(200):
            orders.send("merchant:9", {"i": i})
        with Endpoint(router.url, ["merchant:9"]) as m:
            got = drain(m, 200)
            assert [payload_json(d)["i"] for d in got] == list(range(200))


def test_channel_fanout_one_delivery_per_member(url):
    parties = ["user:7", "merchant:881", "rider:42"]
    eps = [Endpoint(url, [p]) for p in parties]
    try:
        with Sender(url, "orders") as orders:
            orders.join("order:1001", parties)
            mid = orders.send("order:1001", {"state": "picked_up"}, channel=True,
                              kind="order.picked_up")
            for ep, party in zip(eps, parties):
                d = drain(ep, 1)[0]
                assert d.address == party and d.channel == "order:1001" and d.seq == 1
            # DELIVERED only once all three members acked
            assert orders.wait(mid, Status.DELIVERED, timeout=5).status == Status.DELIVERED
    finally:
        for ep in eps:
            ep.close()


def test_leave_and_close_channel(router):
    with Endpoint(router.url, ["user:1"]) as u, Endpoint(router.url, ["rider:1"]) as r, \
            Sender(router.url, "orders") as s:
        s.join("order:5", ["user:1", "rider:1"])
        s.leave("order:5", ["rider:1"])
        s.send("order:5", b"chat", channel=True, msg_class=MsgClass.CHAT)
        assert drain(u, 1)[0].payload == b"chat"
        assert r.recv(timeout=0.3) is None
        s.leave("order:5")  # no addresses: close the channel
        mid = s.send("order:5", b"late", channel=True)
        rec = s.wait(mid, Status.DELIVERED, timeout=2)
        assert rec.status == Status.REFUSED and rec.code == ErrorCode.UNKNOWN_CHANNEL


def test_gateway_binds_thousands_of_addresses(router):
    addrs = [f"user:{i}" for i in range(5000)]
    with Endpoint(router.url, addrs, role=Role.GATEWAY, name="gw-1") as gw, \
            Sender(router.url, "orders") as s:
        for i in range(0, 5000, 50):
            s.send(addrs[i], {"to": addrs[i]}, msg_class=MsgClass.NOTICE)
        got = drain(gw, 100)
        assert sorted(d.address for d in got) == sorted(addrs[::50])
        assert all(payload_json(d)["to"] == d.address for d in got)



def test_names_that_share_prefixes_route_to_their_own_gateway(router):
    # Names of every length around the index's 8-byte hashing steps, sharing prefixes,
    # split between two gateways: each message must reach the gateway that bound it.
    # Addresses are <kind>:<id>, so the shortest is 3 bytes.
    names = [f"r:{'r' * n}{suffix}" for n in range(1, 26) for suffix in ("", "x", "7")]
    names = sorted(set(names))
    first, second = names[0::2], names[1::2]
    with Endpoint(router.url, first, role=Role.GATEWAY, name="gw-a") as a, \
            Endpoint(router.url, second, role=Role.GATEWAY, name="gw-b") as b, \
            Sender(router.url, "orders") as s:
        for name in names:
            s.send(name, {"to": name}, msg_class=MsgClass.NOTICE)
        got_a, got_b = drain(a, len(first)), drain(b, len(second))
        assert sorted(d.address for d in got_a) == sorted(first)
        assert sorted(d.address for d in got_b) == sorted(second)
        assert all(payload_json(d)["to"] == d.address for d in got_a + got_b)

def test_gateway_bind_more_and_unbind(router):
    with Endpoint(router.url, ["user:1"], role=Role.GATEWAY, name="gw") as gw, \
            Sender(router.url, "svc") as s:
        gw.bind(["user:2"])  # BIND and UNBIND have no reply: presence shows them done
        wait_until(lambda: s.presence(["user:2"])["user:2"] is not None, 5, "user:2 bound")
        s.send("user:2", b"hi")
        assert drain(gw, 1)[0].address == "user:2"
        gw.unbind(["user:2"])
        wait_until(lambda: s.presence(["user:2"])["user:2"] is None, 5, "user:2 unbound")
        s.send("user:2", b"held")
        assert gw.recv(timeout=0.3) is None
        with Endpoint(router.url, ["user:2"]) as other:
            assert drain(other, 1)[0].payload == b"held"


def test_location_is_conflated_per_rider_and_recipient(router):
    with Sender(router.url, "tracker") as s:
        for rider in ("rider:1", "rider:2"):
            for i in range(20):
                s.send("user:7", {"rider": rider, "i": i}, msg_class=MsgClass.LOCATION, key=rider)
        s.poll(0.2)
        with Endpoint(router.url, ["user:7"]) as u:
            got = drain(u, 2)
            assert sorted((payload_json(d)["rider"], payload_json(d)["i"]) for d in got) == [
                ("rider:1", 19), ("rider:2", 19)]
            assert all(d.seq == 0 for d in got)  # best effort: no sequence, no ack
            assert u.recv(timeout=0.3) is None


def test_lz4_payload_round_trip(url):
    big = {"items": ["dumplings"] * 400, "notes": "ring the bell twice"}
    with Endpoint(url, ["merchant:3"]) as m, Sender(url, "orders", compress_above=512) as s:
        s.send("merchant:3", big)
        d = drain(m, 1)[0]
        assert d.flags & 1  # LZ4 flag travelled with the message
        assert payload_json(d) == big


def test_resume_from_cursor_skips_what_endpoint_holds(router):
    with Sender(router.url, "orders") as s:
        with Endpoint(router.url, ["rider:5"]) as r:
            s.send("rider:5", b"1")
            s.send("rider:5", b"2")
            s.send("rider:5", b"unacked")
            got = drain(r, 2)  # acked ...
            drain(r, 1, ack=False)  # ... and received but not acked
            cursors = r.cursors
        assert cursors == {"rider:5": 2}
        s.send("rider:5", b"3")
        s.poll(0.1)
        with Endpoint(router.url, ["rider:5"], cursors=cursors) as r2:
            got = drain(r2, 2)
            assert [d.payload for d in got] == [b"unacked", b"3"] and got[1].seq == 4
            assert r2.recv(timeout=0.3) is None


def test_unacked_messages_are_redelivered_to_the_next_connection(router):
    with Sender(router.url, "orders") as s:
        r = Endpoint(router.url, ["rider:6"])
        for i in range(5):
            s.send("rider:6", str(i))
        drain(r, 5, ack=False)
        r.close(bye=True)
        with Endpoint(router.url, ["rider:6"]) as again:
            got = drain(again, 5)
            assert [d.payload for d in got] == [b"0", b"1", b"2", b"3", b"4"]
            assert [d.seq for d in got] == [1, 2, 3, 4, 5]


def test_queue_full_refuses_with_clear_code(make_router):
    r = make_router("--max-queue", "10")
    with Sender(r.url, "orders") as s:
        ids = [s.send("merchant:offline", {"i": i}) for i in range(15)]
        results = [s.wait(mid, Status.ACCEPTED, timeout=2) for mid in ids]
        assert [x.status for x in results[:10]] == [Status.ACCEPTED] * 10
        assert {(x.status, x.code) for x in results[10:]} == {(Status.REFUSED, ErrorCode.QUEUE_FULL)}


def test_one_sender_cannot_take_the_whole_queue(make_router):
    # A service flooding offline recipients (here over a 3-member channel: each SEND
    # holds 3 entries) reaches its own quota; other senders still get through.
    r = make_router("--max-queued-per-sender", "30", "--max-queued", "1000")
    with Sender(r.url, "flooder") as f, Sender(r.url, "orders") as s:
        f.join("order:77", ["user:gone-1", "user:gone-2", "user:gone-3"])
        ids = [f.send("order:77", {"i": i}, channel=True) for i in range(12)]
        results = [f.wait(mid, Status.ACCEPTED, timeout=2) for mid in ids]
        assert [x.status for x in results[:10]] == [Status.ACCEPTED] * 10
        assert {(x.status, x.code) for x in results[10:]} == {
            (Status.REFUSED, ErrorCode.SENDER_QUOTA)}
        f.send("user:gone-1", b"best effort", msg_class=MsgClass.NOTICE)  # shed, counted
        with Endpoint(r.url, ["merchant:9"]) as m:
            mid = s.send("merchant:9", {"order": 1})
            assert payload_json(drain(m, 1)[0]) == {"order": 1}
            assert s.wait(mid, Status.DELIVERED, timeout=2).status == Status.DELIVERED
        with Endpoint(r.url, ["user:gone-1", "user:gone-2", "user:gone-3"]) as u:
            drain(u, 30)  # the flooder's backlog drains and acks: its quota frees up
            # the acks travel on u's connection, the next SEND on f's: the router may
            # read the SEND first, so the quota frees up within moments, not at once
            deadline = time.monotonic() + 3
            while True:
                again = f.send("order:77", {"i": "after"}, channel=True)
                rec = f.wait(again, Status.ACCEPTED, timeout=2)
                if rec.status == Status.ACCEPTED or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert rec.status == Status.ACCEPTED, rec
    r.wait_for_log("shed 1,", timeout=3)  # the NOTICE over quota, in the 1 s summary


def test_ttl_expired_while_queued(router):
    with Sender(router.url, "dispatch") as s:
        mid = s.send("rider:77", b"offer", msg_class=MsgClass.DISPATCH, ttl_ms=200)
        keep = s.send("rider:77", b"order", msg_class=MsgClass.ORDER)
        time.sleep(0.4)
        with Endpoint(router.url, ["rider:77"]) as r:
            got = drain(r, 1)
            assert got[0].payload == b"order" and got[0].seq == 2  # seq 1 skipped, never reused
            rec = s.wait(mid, Status.DELIVERED, timeout=2)
            assert rec.status == Status.EXPIRED and rec.code == ErrorCode.EXPIRED
            assert s.wait(keep, Status.DELIVERED, timeout=2).status == Status.DELIVERED


def test_window_bounds_inflight_and_acks_open_it(make_router):
    r = make_router("--window", "8")
    with Endpoint(r.url, ["merchant:1"]) as m, Sender(r.url, "orders") as s:
        for i in range(20):
            s.send("merchant:1", str(i))
        first = drain(m, 8, ack=False)
        assert m.recv(timeout=0.3) is None  # window of 8, none acked
        for d in first:
            m.ack(d)
        rest = drain(m, 12)
        assert [int(d.payload) for d in first + rest] == list(range(20))


def test_gateway_binds_more_addresses_than_one_hello_lists(router):
    # HELLO lists at most 65,535 addresses; the SDK binds the rest with BINDs.
    addrs = [f"user:{i}" for i in range(70_000)]
    with Endpoint(router.url, addrs, role=Role.GATEWAY, name="gw-big") as gw, \
            Sender(router.url, "orders") as s:
        for a in ("user:0", "user:65534", "user:65535", "user:69999"):
            s.send(a, {"to": a})
        got = drain(gw, 4)
        assert sorted(d.address for d in got) == sorted(
            ["user:0", "user:65534", "user:65535", "user:69999"])
