"""Idle addresses are reclaimed, and a name that comes back never sees its numbering go
backwards: a real router process, real clients, restarts by SIGKILL."""

from __future__ import annotations

import time
from pathlib import Path

from router.client import Endpoint, Sender
from router.protocol import Status

from support import free_port, gauge, wait_until


def one_order_life(url: str, user: str, sender: Sender, cursor: int = 0) -> int:
    """``user`` binds, gets one reliable message, acks it and leaves; its seq."""
    with Endpoint(url, [user], cursors={user: cursor}) as ep:
        mid = sender.send(user, {"order": 1})
        d = ep.recv(timeout=5)
        assert d is not None and d.msg_id == mid
        ep.ack(d)
        ep.flush()
        assert sender.wait(mid, Status.DELIVERED).status == Status.DELIVERED
        return d.seq


def test_new_users_keep_arriving_past_max_addresses(make_router):
    """The operator's report: max_addresses 30, users each live one order and leave;
    user 31 and every later one is admitted once idle addresses are reclaimed."""
    port = free_port()
    r = make_router("--max-addresses", "30", "--address-idle-seconds", "0.3",
                    "--metrics-port", str(port))
    with Sender(r.url, "orders-svc") as s:
        for batch in range(3):
            for i in range(25):
                one_order_life(r.url, f"user:{batch}-{i}", s)
            # the 25 just used go idle and are reclaimed (0.3 s, then one tick's walk);
            # the counter is read from a snapshot at most 0.5 s old
            want = 25 * (batch + 1)
            wait_until(lambda: gauge(port, "router_addresses_reclaimed_total") >= want, 10,
                     "idle reclaim")
    assert gauge(port, "router_addresses_created_total") >= 75
    wait_until(lambda: gauge(port, "router_addresses") == 0, 5, "an empty table")


def test_a_returning_address_numbers_above_what_it_held(make_router):
    port = free_port()
    r = make_router("--address-idle-seconds", "0.3", "--metrics-port", str(port))
    with Sender(r.url, "orders-svc") as s:
        first = [one_order_life(r.url, "user:back", s, cursor=c) for c in (0, 1, 2)]
        assert first == [1, 2, 3]
        wait_until(lambda: gauge(port, "router_addresses_reclaimed_total") >= 1, 10, "reclaim")
        # it comes back holding its old cursor: the next message is above it, not a repeat
        again = one_order_life(r.url, "user:back", s, cursor=3)
        assert again > 3
        wait_until(lambda: gauge(port, "router_addresses_reclaimed_total") >= 2, 10, "reclaim")
        # ... and from a new device that holds nothing (cursor 0)
        assert one_order_life(r.url, "user:back", s, cursor=0) > again


def test_a_channel_member_is_not_reclaimed_until_the_channel_closes(make_router):
    port = free_port()
    r = make_router("--address-idle-seconds", "0.2", "--metrics-port", str(port))
    with Sender(r.url, "orders-svc") as s:
        s.join("order:77", ["user:in-order", "merchant:in-order"])
        s.poll(0.1)  # JOIN is sent at once; nothing comes back
        time.sleep(1.0)  # several idle periods and walks: members stay
        assert gauge(port, "router_addresses_reclaimed_total") == 0
        s.leave("order:77")  # closed when the order ends
        s.poll(0.1)
        wait_until(lambda: gauge(port, "router_addresses_reclaimed_total") >= 2, 10,
                 "members reclaimed after the channel closed")


def test_numbering_stays_above_a_reclaimed_address_across_restarts(make_router):
    """The floor survives a SIGKILL even after the segments that held the reclaimed
    address's own records are deleted (tiny segments, 1 s retention)."""
    port = free_port()
    r = make_router("--address-idle-seconds", "0.3", "--segment-bytes", "1",
                    "--dedup-seconds", "1", "--metrics-port", str(port))
    with Sender(r.url, "orders-svc") as s:
        for c in range(5):
            one_order_life(r.url, "user:gone", s, cursor=c)
    wait_until(lambda: gauge(port, "router_addresses_reclaimed_total") >= 1, 10, "reclaim")
    # segments roll every slice; those past retention (1 s) are deleted
    journal = Path(r.data_dir, "journal")
    held = set(journal.glob("*.log"))  # every segment that may hold user:gone's records
    wait_until(lambda: not held & set(journal.glob("*.log")), 10,
               "the segments that held user:gone's records to be deleted")
    r.kill()
    r.restart()
    with Sender(r.url, "orders-svc") as s:
        # a new device (cursor 0): numbering still continues above what the name held
        assert one_order_life(r.url, "user:gone", s, cursor=0) > 5


def test_an_abandoned_channel_closes_and_a_used_one_stays(make_router):
    port = free_port()
    r = make_router("--channel-idle-seconds", "0.5", "--address-idle-seconds", "0.3",
                    "--metrics-port", str(port))
    with Sender(r.url, "orders-svc") as s, Endpoint(r.url, ["user:busy"]) as ep:
        s.join("order:abandoned", ["user:gone-away", "merchant:gone-away"])
        s.join("order:busy", ["user:busy"])
        for _ in range(8):  # 1.6 s of use, three idle periods of the abandoned one
            s.send("order:busy", {"rider": "moving"}, channel=True)
            d = ep.recv(timeout=5)
            assert d is not None
            ep.ack(d)
            time.sleep(0.2)
        wait_until(lambda: gauge(port, "router_channels_closed_idle_total") >= 1, 10,
                 "the abandoned channel closed")
        assert gauge(port, "router_channels_closed_idle_total") == 1
        # its members were only held by the channel: now they are reclaimed too
        wait_until(lambda: gauge(port, "router_addresses_reclaimed_total") >= 2, 10,
                 "the abandoned channel's members reclaimed")


def test_sender_names_are_forgotten_once_unused_and_dedup_holds_until_then(make_router):
    port = free_port()
    r = make_router("--address-idle-seconds", "0.3", "--dedup-seconds", "0.5",
                    "--metrics-port", str(port))
    with Endpoint(r.url, ["merchant:many"]) as ep:
        for i in range(20):
            with Sender(r.url, f"svc-{i}") as s:
                mid = s.send("merchant:many", {"n": i})
                d = ep.recv(timeout=5)
                assert d is not None and d.msg_id == mid
                ep.ack(d)
                ep.flush()
                assert s.wait(mid, Status.DELIVERED).status == Status.DELIVERED
        wait_until(lambda: gauge(port, "router_sender_names_reclaimed_total") >= 20, 10,
                 "sender names reclaimed")
        assert gauge(port, "router_sender_names") == 0
        # a name that comes back is a sender like any other: its repeat is still a repeat
        with Sender(r.url, "svc-3") as s:
            mid = s.send("merchant:many", {"again": 1})
            s.send("merchant:many", {"again": 1}, msg_id=mid)
            d = ep.recv(timeout=5)
            assert d is not None and d.msg_id == mid
            ep.ack(d)
            ep.flush()
            assert ep.recv(timeout=0.5) is None  # delivered once


def test_a_gateway_connection_forgets_the_oldest_released_addresses(make_router):
    """A gateway binds and releases every app address it serves; its connection keeps
    the cursors of the ``keep_unbound`` latest released only (it used to keep them all:
    memory growing with every party it ever served). A kept address binds again where
    it was (nothing handed twice); a forgotten one starts at the cursor given and gets
    again what it never acked."""
    r = make_router()
    with Sender(r.url, "orders") as s, \
            Endpoint(r.url, [], name="gw", keep_unbound=50) as gw:
        for i in range(400):                 # 400 parties come, get one order, go
            a = f"user:{i}"
            gw.bind_at({a: 0})
            mid = s.send(a, {"order": i})
            d = gw.recv(timeout=5)
            assert d is not None and d.msg_id == mid
            if i != 0:                       # user:0 never acks its order
                gw.ack(d)
            gw.flush()
            gw.unbind([a])
        wait_until(lambda: gw.engine.stats()["forgotten"] == 350, 5,
                   "the 350 oldest released addresses forgotten")
        stats = gw.engine.stats()
        assert stats["cursors"] == 50, stats
        assert "user:0" not in gw.cursors and "user:399" not in gw.cursors

        gw.bind(["user:399"])                # kept: resumes at seq 1, nothing again
        assert gw.recv(timeout=0.5) is None
        gw.bind(["user:0"])                  # forgotten: cursor 0, the unacked order again
        d = gw.recv(timeout=5)
        assert d is not None and (d.address, d.seq) == ("user:0", 1)
        assert gw.engine.stats()["duplicates"] == 0
