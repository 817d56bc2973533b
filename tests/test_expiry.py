"""TTL expiry: EXPIRED within 100 ms of the deadline, queued or in flight, bound or not."""

from __future__ import annotations

import time

from router import protocol as P
from router.protocol import Command, MsgClass, Role, Status

from support import Peer


def receipts_until(peer: Peer, msg_id: int, status: Status, timeout: float = 3.0) -> float:
    """Wait for ``status`` for ``msg_id``; the monotonic time it arrived."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frames = peer.recv(timeout=max(deadline - time.monotonic(), 0))
        if frames is None:
            break
        if frames[0][2] != Command.RECEIPT:
            continue
        for r in P.decode_receipts(frames[0]):
            if r.msg_id == msg_id and r.status == status:
                return time.monotonic()
    raise AssertionError(f"no {status.name} for message {msg_id} within {timeout}s")


def test_expired_within_100ms_of_deadline_while_offline(router):
    with Peer(router.url) as s:
        s.hello(Role.SENDER, "ttl-offline")
        lateness = []
        for n in range(5):
            sent = time.monotonic()
            s.send(P.encode_send(f"user:ttl-off-{n}", 100 + n, MsgClass.ORDER, ttl_ms=300), b"x")
            got = receipts_until(s, 100 + n, Status.EXPIRED)
            lateness.append(got - sent - 0.3)
        assert min(lateness) >= -0.005, lateness  # never before the deadline
        assert max(lateness) < 0.1, f"EXPIRED late by {max(lateness):.3f}s: {lateness}"


def test_in_flight_unacked_message_expires_at_its_deadline(router):
    with Peer(router.url) as ep, Peer(router.url) as s:
        ep.hello(Role.ENDPOINT, "rider-app", [("rider:ttl", 0)])
        s.hello(Role.SENDER, "dispatch")
        sent = time.monotonic()
        s.send(P.encode_send("rider:ttl", 7, MsgClass.DISPATCH, ttl_ms=400), b"offer")
        deliver = ep.recv_command(Command.DELIVER)
        assert P.decode_deliver(deliver[0], deliver[1]).msg_id == 7
        # the rider never acks: the offer must not stay in flight past its TTL
        got = receipts_until(s, 7, Status.EXPIRED)
        assert 0.395 <= got - sent < 0.5, f"EXPIRED {got - sent:.3f}s after a 400 ms TTL"
        # the next message is not held back by the expired one, and gets the next seq
        s.send(P.encode_send("rider:ttl", 8, MsgClass.DISPATCH, ttl_ms=5000), b"next")
        f = ep.recv_command(Command.DELIVER)
        nxt = P.decode_deliver(f[0], f[1])
        assert (nxt.msg_id, nxt.seq) == (8, 2)
        ep.send(P.encode_ack([("rider:ttl", 2)]))
        receipts_until(s, 8, Status.DELIVERED)


def test_acked_message_is_not_expired_later(router):
    with Peer(router.url) as ep, Peer(router.url) as s:
        ep.hello(Role.ENDPOINT, "user-app", [("user:acked", 0)])
        s.hello(Role.SENDER, "orders")
        s.send(P.encode_send("user:acked", 9, MsgClass.ORDER, ttl_ms=300), b"x")
        f = ep.recv_command(Command.DELIVER)
        d = P.decode_deliver(f[0], f[1])
        ep.send(P.encode_ack([("user:acked", d.seq)]))
        receipts_until(s, 9, Status.DELIVERED)
        # past the deadline: no second, contradicting receipt
        end = time.monotonic() + 0.6
        while time.monotonic() < end:
            frames = s.recv(timeout=0.1)
            if frames and frames[0][2] == Command.RECEIPT:
                statuses = [r.status for r in P.decode_receipts(frames[0]) if r.msg_id == 9]
                assert Status.EXPIRED not in statuses, statuses


def test_expiry_survives_a_restart(make_router):
    r = make_router()
    with Peer(r.url) as s:
        s.hello(Role.SENDER, "restart-ttl")
        s.send(P.encode_send("user:ttl-restart", 11, MsgClass.ORDER, ttl_ms=1500), b"x")
        receipts_until(s, 11, Status.ACCEPTED)
    r.kill()
    r.restart()
    with Peer(r.url) as s:
        s.hello(Role.SENDER, "restart-ttl")  # receipts held for this name come here
        receipts_until(s, 11, Status.EXPIRED, timeout=4.0)
