"""Addresses: the `<kind>:<id>` form, and a second connection taking an address over."""

from __future__ import annotations

import pytest

from router import protocol as P
from router.protocol import Command, ErrorCode, MsgClass, Role, Status

from support import Peer, refusal_of


@pytest.mark.parametrize("bad", ["merchant", "merchant:", ":881", ":"])
def test_send_to_an_address_without_kind_and_id_is_refused(router, bad):
    with Peer(router.url) as s:
        s.hello(Role.SENDER, "orders")
        s.send(P.encode_send(bad, 5, MsgClass.ORDER), b"x")
        receipts, (code, mid, text) = refusal_of(s)
        assert [(r.msg_id, r.status, r.code) for r in receipts] == [
            (5, Status.REFUSED, ErrorCode.BAD_ADDRESS)]
        assert code == ErrorCode.BAD_ADDRESS and mid == 5 and "<kind>:<id>" in text


@pytest.mark.parametrize("bad", ["merchant", "merchant:", ":881"])
def test_binding_an_address_without_kind_and_id_is_refused(router, bad):
    with Peer(router.url) as ep:
        ep.send(P.encode_hello(Role.ENDPOINT, "app", [(bad, 0)]))
        err = ep.recv_command(Command.ERROR, skip_others=True)
        assert P.decode_error(err[0], err[1])[0] == ErrorCode.BAD_ADDRESS


def test_takeover_tells_the_old_holder_and_is_logged(router):
    with Peer(router.url) as old, Peer(router.url) as new, Peer(router.url) as s:
        old.hello(Role.ENDPOINT, "phone-1", [("user:7", 0)])
        new.hello(Role.ENDPOINT, "phone-2", [("user:7", 0)])
        err = old.recv_command(Command.ERROR, skip_others=True)
        code, _, text = P.decode_error(err[0], err[1])
        assert code == ErrorCode.ADDRESS_TAKEN
        assert "user:7" in text and "phone-2" in text
        router.wait_for_log("address taken over: user:7 by phone-2 (was held by phone-1)")
        # deliveries go to the new holder only
        s.hello(Role.SENDER, "orders")
        s.send(P.encode_send("user:7", 1, MsgClass.ORDER), b"x")
        d = new.recv_command(Command.DELIVER, skip_others=True)
        assert P.decode_deliver(d[0], d[1]).address == "user:7"
        while (frames := old.recv(timeout=0.2)) is not None:
            assert frames[0][2] != Command.DELIVER, frames
