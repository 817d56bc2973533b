"""Trust against a real authenticated router: CURVE links, the ZAP handler, principals'
rights, address ownership, rate budgets, reloads and revocation (docs/PROTOCOL.md §11).

Every party has its own key pair made by router.auth.keys; the router gets a
credentials file naming them. Nothing is mocked: the router is a `router serve`
process, clients are the SDK (or raw DEALERs for the wire-level checks).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import orjson
import pytest
import zmq

from router.auth.keys import client_options, make_pair
from router.client import Endpoint, Sender
from router.protocol import ErrorCode, MsgClass, Role, Status
from router.session import RouterError, RouterUnavailable

from support import curve_router, drain, free_port


def metric(r, name: str) -> float:
    """The sum of a metric's samples on the router's /metrics (after a refresh)."""
    import urllib.request
    time.sleep(1.1)  # the collector refreshes its snapshot once a second
    text = urllib.request.urlopen(f"http://127.0.0.1:{r.metrics_port}/metrics").read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))

PARTIES = ("router", "orders", "merchant", "rider", "ops", "intruder", "stranger")

CREDENTIALS = """
[[principal]]
name = "orders"
public_keys = ["{keys}/orders.key"]
roles = ["sender"]
names = ["orders*"]
send = ["merchant:*", "rider:*", "user:*"]
send_channels = ["order:*"]
join = ["order:*"]
request = ["router.history", "router.presence"]
history = "all"
presence = "all"

[[principal]]
name = "merchant-881"
public_keys = ["{keys}/merchant.key"]
roles = ["endpoint"]
names = ["merchant-881*"]
bind = ["merchant:881"]
send_channels = {{CHAT = ["order:*"]}}
request = ["router.history"]
history = "own"

[[principal]]
name = "small-shop"
public_keys = ["{keys}/ops.key"]
roles = ["sender"]
names = ["*"]
send = ["merchant:*"]
queue_quota = 5

[[principal]]
name = "rider-42"
public_keys = ["{keys}/rider.key"]
roles = ["endpoint"]
names = ["rider-42"]
bind = ["rider:42"]
send = {{LOCATION = ["user:*"]}}
rate = {{messages = 20, burst = 1.0}}

[[principal]]
name = "intruder"
public_keys = ["{keys}/intruder.key"]
roles = ["endpoint", "sender"]
names = ["intruder"]
bind = ["user:666"]
request = ["router.history"]
history = "own"
"""


@pytest.fixture
def trust(tmp_path: Path, make_router):
    """An authenticated router and everyone's keys: ``(router, keys dir, options(name))``."""
    keys = tmp_path / "certs"
    port = free_port()
    r, options = curve_router(make_router, keys, PARTIES, CREDENTIALS.format(keys=keys),
                              "--metrics-port", str(port))
    r.metrics_port = port
    return r, options


def _refusal(sender: Sender, mid: int) -> tuple[Status, ErrorCode]:
    rec = sender.wait(mid, Status.ACCEPTED, timeout=5)
    return rec.status, rec.code


def test_known_keys_route_end_to_end(trust):
    r, opts = trust
    with Endpoint(r.url, ["merchant:881"], name="merchant-881", **opts("merchant")) as ep, \
            Sender(r.url, "orders-api", **opts("orders")) as s:
        mid = s.send("merchant:881", {"order": 1001}, order=1001)
        [d] = drain(ep, 1)
        assert orjson.loads(d.payload) == {"order": 1001}
        assert s.wait(mid, Status.DELIVERED).status == Status.DELIVERED
    log = r.log()
    assert "credentials" in log and "CURVE on every endpoint" in log


def test_unknown_key_is_refused_in_the_handshake(trust):
    r, opts = trust
    with pytest.raises(RouterError) as err:
        Sender(r.url, "stranger", timeout=3, **opts("stranger"))
    assert err.value.code == ErrorCode.FORBIDDEN and "credentials" in str(err.value)


def test_wrong_server_key_never_connects(trust):
    r, opts = trust
    with pytest.raises((RouterUnavailable, RouterError)):
        # the client trusts another key than the router's: the handshake cannot finish
        Sender(r.url, "orders-api", timeout=2, **opts("orders", server="intruder"))


def test_a_plain_peer_gets_nothing_from_a_curve_router(trust):
    from support import Peer
    from router import protocol as P
    r, _ = trust
    with Peer(r.url) as p:
        p.send(P.encode_hello(Role.SENDER, "orders-api"))
        assert p.recv(timeout=1.0) is None


def test_hello_role_and_name_are_checked(trust):
    r, opts = trust
    with pytest.raises(RouterError) as err:  # orders may only be a sender
        Endpoint(r.url, ["merchant:881"], name="orders-api", timeout=3, **opts("orders"))
    assert err.value.code == ErrorCode.FORBIDDEN and "role" in str(err.value)
    with pytest.raises(RouterError) as err:  # names must match orders*
        Sender(r.url, "billing", timeout=3, **opts("orders"))
    assert err.value.code == ErrorCode.FORBIDDEN and "name" in str(err.value)


def test_a_hijack_is_refused_and_the_owner_keeps_receiving(trust):
    r, opts = trust
    errors: list[RouterError] = []
    with Endpoint(r.url, ["merchant:881"], name="merchant-881", **opts("merchant")) as owner, \
            Endpoint(r.url, ["user:666"], name="intruder", on_error=errors.append,
                     **opts("intruder")) as thief, \
            Sender(r.url, "orders-api", **opts("orders")) as s:
        thief.bind(["merchant:881"])
        deadline = time.monotonic() + 5
        while not errors and time.monotonic() < deadline:
            thief.recv(timeout=0.1)
        assert errors and errors[0].code == ErrorCode.FORBIDDEN
        assert "merchant:881" in str(errors[0])
        mid = s.send("merchant:881", {"order": 7})
        [d] = drain(owner, 1)
        assert orjson.loads(d.payload) == {"order": 7}
        assert s.wait(mid, Status.DELIVERED).status == Status.DELIVERED
        assert thief.recv(timeout=0.3) is None
        assert not owner.errors


def test_a_rightful_takeover_moves_the_address_and_tells_the_old_holder(trust):
    r, opts = trust
    old_errors: list[RouterError] = []
    with Endpoint(r.url, ["merchant:881"], name="merchant-881", on_error=old_errors.append,
                  **opts("merchant")) as old, \
            Sender(r.url, "orders-api", **opts("orders")) as s:
        # the same merchant's second device (same principal, own connection)
        with Endpoint(r.url, ["merchant:881"], name="merchant-881-tablet",
                      **opts("merchant")) as new:
            deadline = time.monotonic() + 5
            while not old_errors and time.monotonic() < deadline:
                old.recv(timeout=0.1)
            assert old_errors and old_errors[0].code == ErrorCode.ADDRESS_TAKEN
            s.send("merchant:881", {"order": 8})
            [d] = drain(new, 1)
            assert orjson.loads(d.payload) == {"order": 8}


def test_sends_beyond_the_principal_rights_are_refused(trust):
    r, opts = trust
    with Sender(r.url, "orders-api", **opts("orders")) as s, \
            Endpoint(r.url, ["merchant:881"], name="merchant-881", **opts("merchant")) as m, \
            Endpoint(r.url, ["user:666"], name="intruder", on_error=lambda e: None,
                     **opts("intruder")) as i:
        s.join("order:1001", ["merchant:881"])
        time.sleep(0.2)
        # orders may not address ops:* ; the merchant may CHAT to its order channels only
        assert _refusal(s, s.send("ops:1", "x")) == (Status.REFUSED, ErrorCode.FORBIDDEN)
        assert _refusal(m, m.send("order:1001", "hello", msg_class=MsgClass.CHAT,
                                  channel=True))[0] == Status.ACCEPTED
        assert _refusal(m, m.send("order:1001", "x", msg_class=MsgClass.ORDER,
                                  channel=True)) == (Status.REFUSED, ErrorCode.FORBIDDEN)
        assert _refusal(m, m.send("user:7", "x")) == (Status.REFUSED, ErrorCode.FORBIDDEN)
        # the intruder may send nothing, nor join channels
        assert _refusal(i, i.send("merchant:881", "x")) == (Status.REFUSED,
                                                             ErrorCode.FORBIDDEN)
        i.join("order:1001", ["user:666"])
        deadline = time.monotonic() + 3
        while not any(e.code == ErrorCode.FORBIDDEN and "channel" in str(e)
                      for e in i.errors) and time.monotonic() < deadline:
            i.recv(timeout=0.1)
        assert any("channel" in str(e) for e in i.errors)


def test_history_is_scoped_to_the_orders_a_party_is_part_of(trust):
    r, opts = trust
    with Sender(r.url, "orders-api", **opts("orders")) as s, \
            Endpoint(r.url, ["merchant:881"], name="merchant-881", **opts("merchant")) as m, \
            Endpoint(r.url, ["user:666"], name="intruder", **opts("intruder")) as i:
        mid = s.send("merchant:881", {"note": "no scallions"}, order=5005)
        drain(m, 1)
        s.wait(mid, Status.DELIVERED)
        deadline = time.monotonic() + 5
        while not s.history("5005") and time.monotonic() < deadline:
            time.sleep(0.1)  # the history writer commits in the background
        assert s.history("5005")  # ops-like principal: everything
        assert m.history("5005")  # the merchant is part of the order
        with pytest.raises(RouterError) as err:
            i.history("5005")
        assert err.value.code == ErrorCode.FORBIDDEN
        with pytest.raises(RouterError) as err:  # not in its 'request' list at all
            i.presence()
        assert err.value.code == ErrorCode.FORBIDDEN


def test_the_rate_budget_refuses_then_recovers(trust):
    r, opts = trust
    with Endpoint(r.url, ["rider:42"], name="rider-42", on_error=lambda e: None,
                  **opts("rider")) as rider, \
            Endpoint(r.url, ["merchant:881"], name="merchant-881", **opts("merchant")):
        # 20 messages/s with a 1 s burst; LOCATION is best effort: no receipts, ERRORs
        for n in range(60):
            rider.send("user:7", {"lat": n}, msg_class=MsgClass.LOCATION, key="rider:42")
        rider.flush()
        deadline = time.monotonic() + 3
        while not any(e.code == ErrorCode.RATE_EXCEEDED for e in rider.errors) \
                and time.monotonic() < deadline:
            rider.recv(timeout=0.1)
        assert any(e.code == ErrorCode.RATE_EXCEEDED for e in rider.errors)
        time.sleep(1.2)  # the budget (and the ERROR budget) refills
        # By message id: ERRORs for the first burst may still be arriving now.
        later = {rider.send("user:7", {"lat": n}, msg_class=MsgClass.LOCATION,
                            key="rider:42") for n in range(5)}
        rider.flush()
        time.sleep(0.5)
        rider.recv(timeout=0.1)
        assert not [e for e in rider.errors
                    if e.code == ErrorCode.RATE_EXCEEDED and e.msg_id in later]
    assert metric(r, "router_rate_exceeded_total") >= 1


def test_queue_quota_counts_by_principal_not_hello_name(trust):
    """A principal with queue_quota 5: renaming itself (a second HELLO name) does not
    get it more room for an offline recipient."""
    r, opts = trust
    with Sender(r.url, "shop-a", **opts("ops")) as a, Sender(r.url, "shop-b", **opts("ops")) as b:
        first = [a.send("merchant:999", {"n": n}) for n in range(3)]
        second = [b.send("merchant:999", {"n": n}) for n in range(3)]
        outcomes = [_refusal(a, m) for m in first] + [_refusal(b, m) for m in second]
    # the two connections' sends reach the router in either order: one of the six,
    # whichever came sixth, is over the principal's quota
    assert outcomes.count((Status.ACCEPTED, ErrorCode.NONE)) == 5
    assert outcomes.count((Status.REFUSED, ErrorCode.SENDER_QUOTA)) == 1


def test_sighup_revokes_a_removed_key_and_closes_its_connection(trust):
    r, opts = trust
    events: list[str] = []
    errors: list[RouterError] = []
    with Endpoint(r.url, ["merchant:881"], name="merchant-881", on_event=events.append,
                  on_error=errors.append, **opts("merchant")) as m, \
            Sender(r.url, "orders-api", **opts("orders")) as s:
        text = r.creds_path.read_text()
        start = text.index('[[principal]]\nname = "merchant-881"')
        end = text.index("[[principal]]", start + 5)
        r.creds_path.write_text(text[:start] + text[end:])  # the merchant is gone
        os.kill(r.pid, signal.SIGHUP)
        r.wait_for_log("connections revoked")
        deadline = time.monotonic() + 5
        while not any(e.code == ErrorCode.REVOKED for e in errors) \
                and time.monotonic() < deadline:
            m.recv(timeout=0.1)
        assert any(e.code == ErrorCode.REVOKED for e in errors)
        while "disconnected" not in events and time.monotonic() < deadline + 3:
            m.recv(timeout=0.1)
        assert "disconnected" in events  # the router closed the connection
        assert "1 connections revoked" in r.log()
        # its reconnects are refused in the handshake; the address is offline
        assert s.presence(["merchant:881"]) == {"merchant:881": None}
        # the sender, whose key stayed, still works
        mid = s.send("rider:42", "still here")
        assert s.wait(mid, Status.ACCEPTED).status == Status.ACCEPTED
    with pytest.raises(RouterError) as err:  # a new connection with the removed key
        Endpoint(r.url, ["merchant:881"], name="merchant-881", timeout=3, **opts("merchant"))
    assert err.value.code == ErrorCode.FORBIDDEN
    assert metric(r, "router_revoked_connections_total") == 1
    assert metric(r, 'router_handshakes_total{outcome="refused: unknown key"}') >= 1
    assert metric(r, 'router_handshakes_total{outcome="accepted"}') >= 2


def test_a_bad_credentials_file_on_sighup_keeps_the_old_one(trust):
    r, opts = trust
    r.creds_path.write_text("[[principal]]\nname = 3\n")
    os.kill(r.pid, signal.SIGHUP)
    r.wait_for_log("credentials NOT reloaded")
    with Sender(r.url, "orders-api", **opts("orders")) as s:
        assert s.wait(s.send("rider:42", "x"), Status.ACCEPTED).status == Status.ACCEPTED


def test_a_reload_under_load_loses_nothing(trust):
    r, opts = trust
    with Endpoint(r.url, ["merchant:881"], name="merchant-881", **opts("merchant")) as m, \
            Sender(r.url, "orders-api", **opts("orders")) as s:
        sent = []
        for n in range(2000):
            sent.append(s.send("merchant:881", {"n": n}))
            if n % 500 == 250:
                os.kill(r.pid, signal.SIGHUP)  # same file: nobody is revoked
        got = drain(m, 2000, timeout=20)
        assert [orjson.loads(d.payload)["n"] for d in got] == list(range(2000))
        for mid in sent[-10:]:
            assert s.wait(mid, Status.DELIVERED, timeout=10).status == Status.DELIVERED
    r.wait_for_log("0 connections revoked")  # reloads run between the loop's slices


def test_plain_mechanism_with_passwords(tmp_path, make_router):
    import hashlib
    creds = tmp_path / "credentials.toml"
    creds.write_text(f'''
[[principal]]
name = "orders"
password_sha256 = "{hashlib.sha256(b"s3cret-orders").hexdigest()}"
roles = ["sender"]
send = ["*"]
[[principal]]
name = "merchant"
password_sha256 = "{hashlib.sha256(b"s3cret-merchant").hexdigest()}"
roles = ["endpoint"]
bind = ["merchant:*"]
''')
    r = make_router("--credentials", str(creds), "--mechanism", "plain")
    with Endpoint(r.url, ["merchant:9"], name="merchant",
                  plain=("merchant", "s3cret-merchant")) as m, \
            Sender(r.url, "orders", plain=("orders", "s3cret-orders")) as s:
        s.send("merchant:9", "hi")
        assert drain(m, 1)[0].payload == b"hi"
    with pytest.raises(RouterError) as err:
        Sender(r.url, "orders", plain=("orders", "wrong"), timeout=10)
    assert err.value.code == ErrorCode.FORBIDDEN


def test_client_options_name_what_is_missing(tmp_path):
    make_pair(tmp_path, "c")
    with pytest.raises(ValueError, match="both server_key"):
        client_options(server_key=str(tmp_path / "c.key"))
    with pytest.raises(ValueError, match="no secret key"):
        client_options(server_key=str(tmp_path / "c.key"), key=str(tmp_path / "c.key"))
    opts = client_options(str(tmp_path / "c.key"), str(tmp_path / "c.key_secret"))
    assert set(opts) == {zmq.CURVE_SERVERKEY, zmq.CURVE_PUBLICKEY, zmq.CURVE_SECRETKEY}
