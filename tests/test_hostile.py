"""Hostile or broken peers: what one peer says cannot corrupt what others receive."""

from __future__ import annotations

import time

from router import protocol as P
from router.client import Endpoint, Sender
from router.protocol import Command, ErrorCode, MsgClass, Role, Status

from conftest import Peer


def error_or_welcome(peer: Peer, timeout: float = 2.0) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while True:
        frames = peer.recv(max(deadline - time.monotonic(), 0))
        assert frames is not None, "neither ERROR nor WELCOME"
        if frames[0][2] in (Command.ERROR, Command.WELCOME):
            return frames


def test_a_cursor_near_2_64_is_refused_and_numbering_never_wraps(router):
    with Peer(router.url) as bad:
        bad.send(P.encode_hello(Role.ENDPOINT, "hostile", [("user:wrap", 2**64 - 2)]))
        frames = error_or_welcome(bad)
        assert frames[0][2] == Command.ERROR
        code, _, text = P.decode_error(frames[0], frames[1])
        assert code == ErrorCode.BAD_CURSOR and "2**62" in text
        bad.send(P.encode_bind([("user:wrap", P.MAX_CURSOR + 1)]))
        frames = error_or_welcome(bad)
        assert P.decode_error(frames[0], frames[1])[0] == ErrorCode.BAD_CURSOR
    # the real owner sees ordinary numbering, nothing handed out twice or skipped
    with Endpoint(router.url, ["user:wrap"]) as owner, Sender(router.url, "orders") as s:
        ids = [s.send("user:wrap", {"n": n}) for n in range(3)]
        got = [owner.recv(timeout=2) for _ in ids]
        assert [d.seq for d in got] == [1, 2, 3]
        for d in got:
            owner.ack(d)
        owner.flush()
        for mid in ids:
            assert s.wait(mid, Status.DELIVERED).status == Status.DELIVERED


def test_the_highest_honoured_cursor_continues_numbering_above_it(router):
    with Peer(router.url) as ep, Peer(router.url) as s:
        ep.hello(Role.ENDPOINT, "restored-app", [("user:high", P.MAX_CURSOR)])
        s.hello(Role.SENDER, "orders")
        s.send(P.encode_send("user:high", 1, MsgClass.ORDER), b"x")
        f = ep.recv_command(Command.DELIVER)
        assert P.decode_deliver(f[0], f[1]).seq == P.MAX_CURSOR + 1
