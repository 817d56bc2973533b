"""The WebSocket gateway end to end: a real router, a real `router gateway` process and
apps speaking docs/GATEWAY.md over real WebSockets (tcp loopback)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from router.auth import tokens
from router.auth.credentials import TokenKey
from router.client import Endpoint, Sender
from router.protocol import MsgClass, Status

from support import ROOT, drain, free_port

KEY = TokenKey("k1", b"gateway-test-secret-0123456789abcdef")


@pytest.fixture
def gateway(make_router, tmp_path: Path):
    """(router, ws url, http base, metrics port, token(address, ttl))"""
    r = make_router()
    creds = tmp_path / "credentials.toml"
    creds.write_text(f'[tokens]\nkeys = [{{id = "k1", secret = "{KEY.secret.decode()}"}}]\n')
    port, mport = free_port(), free_port()
    log = open(tmp_path / "gateway.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "router", "gateway", "--router", r.url,
                             "--listen", f"127.0.0.1:{port}", "--credentials", str(creds),
                             "--metrics-port", str(mport)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 15
    while b"gateway serving apps" not in (tmp_path / "gateway.log").read_bytes():
        assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
        assert time.monotonic() < deadline, "gateway did not start"
        time.sleep(0.05)

    def token(address: str, ttl: float = 600, key: TokenKey = KEY, now=None) -> str:
        return tokens.issue(address, ttl, [key], "order-router", now=now)

    yield r, f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{port}", mport, token
    proc.terminate()
    proc.wait(10)
    assert "Traceback" not in (tmp_path / "gateway.log").read_text()


def frames_until(ws, n: int, kind: str = "deliver", timeout: float = 5.0) -> list[dict]:
    """The next ``n`` frames of ``kind`` (others skipped)."""
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"got {len(out)} of {n} {kind} frames: {out}"
        try:
            f = json.loads(ws.recv(timeout=left))
        except TimeoutError:
            continue
        if f["type"] == kind:
            out.append(f)
    return out


def hello(ws, token: str, last_seq: int = 0) -> dict:
    ws.send(json.dumps({"type": "hello", "token": token, "last_seq": last_seq}))
    return frames_until(ws, 1, "welcome")[0]


def test_delivery_is_acked_to_the_router_only_when_the_app_acks(gateway):
    r, url, _, _, token = gateway
    with connect(url) as app, Sender(r.url, "orders") as s:
        assert hello(app, token("user:7"))["address"] == "user:7"
        mid = s.send("user:7", {"state": "accepted"}, kind="order.accepted", order=1001)
        [d] = frames_until(app, 1)
        assert (d["seq"], d["kind"], d["data"], d["class"]) == (1, "order.accepted",
                                                                  {"state": "accepted"}, "ORDER")
        assert d["order"] == "order:1001" and d["from"] == "orders"
        time.sleep(0.5)
        assert s.status(mid) is None or s.status(mid).status == Status.ACCEPTED
        app.send(json.dumps({"type": "ack", "seq": d["seq"]}))
        assert s.wait(mid, Status.DELIVERED, timeout=5).status == Status.DELIVERED


def test_refused_tokens_close_with_4001(gateway):
    r, url, _, _, token = gateway
    forged = token("user:7", key=TokenKey("k1", b"x" * 40))
    expired = token("user:7", ttl=5, now=time.time() - 600)
    for bad, reason in ((forged, "bad_signature"), (expired, "expired"),
                        ("nonsense", "malformed")):
        with connect(url) as app:
            app.send(json.dumps({"type": "hello", "token": bad}))
            with pytest.raises(ConnectionClosed) as err:
                app.recv(timeout=5)
            assert err.value.rcvd.code == 4001 and reason in err.value.rcvd.reason


def test_a_returning_app_gets_exactly_what_it_missed_in_order(gateway):
    r, url, _, _, token = gateway
    with Sender(r.url, "orders") as s:
        with connect(url) as app:
            hello(app, token("rider:4"))
            for n in range(1, 4):
                s.send("rider:4", {"n": n})
            got = frames_until(app, 3)
            app.send(json.dumps({"type": "ack", "seq": got[0]["seq"]}))  # only the first
            time.sleep(0.3)
        for n in range(4, 6):  # while it is away
            s.send("rider:4", {"n": n})
        time.sleep(0.3)
        with connect(url) as app:
            assert hello(app, token("rider:4"), last_seq=got[0]["seq"])["resumed_after"] == 1
            again = frames_until(app, 4)
            assert [f["data"]["n"] for f in again] == [2, 3, 4, 5]
            assert [f["seq"] for f in again] == [2, 3, 4, 5]
            with pytest.raises(TimeoutError):
                app.recv(timeout=0.5)  # nothing twice


def test_a_returning_app_gets_the_newest_position_not_a_burst(gateway):
    r, url, _, _, token = gateway
    with connect(url) as app:
        hello(app, token("user:9"))
    with Sender(r.url, "rider-feed") as s:
        for n in range(50):
            s.send("user:9", {"x": n}, msg_class=MsgClass.LOCATION, key="rider:1")
        s.flush()
    time.sleep(0.3)
    with connect(url) as app:
        hello(app, token("user:9"))
        got = frames_until(app, 1)
        assert got[0]["data"] == {"x": 49} and got[0]["class"] == "LOCATION"
        with pytest.raises(TimeoutError):
            app.recv(timeout=0.5)


def test_app_sends_carry_its_address_and_get_receipts(gateway):
    r, url, _, _, token = gateway
    with Endpoint(r.url, ["svc:orders"], name="orders-inbox") as inbox, connect(url) as app:
        hello(app, token("merchant:881"))
        app.send(json.dumps({"type": "send", "id": "c1", "to": "svc:orders",
                             "kind": "merchant.confirmed", "data": {"order": "1001"}}))
        [d] = drain(inbox, 1)
        assert orjson.loads(d.payload) == {"order": "1001", "from": "merchant:881"}
        [rc] = frames_until(app, 1, "receipt")
        assert rc == {"type": "receipt", "id": "c1", "status": "DELIVERED", "code": "NONE"}
        # a merchant may not send positions to users: refused by the gateway's policy
        app.send(json.dumps({"type": "send", "id": "c2", "to": "user:1", "kind": "loc",
                             "class": "LOCATION", "data": {}}))
        [rc] = frames_until(app, 1, "receipt")
        assert (rc["id"], rc["status"], rc["code"]) == ("c2", "REFUSED", "FORBIDDEN")
        app.send("not json")
        [err] = frames_until(app, 1, "error")
        assert err["code"] == "bad_frame"


def test_the_second_device_takes_over(gateway):
    r, url, _, _, token = gateway
    with connect(url) as phone, Sender(r.url, "orders") as s:
        hello(phone, token("user:3"))
        with connect(url) as tablet:
            hello(tablet, token("user:3"))
            with pytest.raises(ConnectionClosed) as err:
                while True:
                    phone.recv(timeout=5)
            assert err.value.rcvd.code == 4002
            s.send("user:3", {"to": "tablet"})
            assert frames_until(tablet, 1)[0]["data"] == {"to": "tablet"}


def test_pages_and_metrics_are_served(gateway):
    r, url, base, mport, token = gateway
    for page in ("/", "/user", "/merchant", "/rider", "/app.js"):
        with urllib.request.urlopen(base + page) as resp:
            assert resp.status == 200 and len(resp.read()) > 100
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(base + "/../../etc/passwd")
    with connect(url) as app:
        hello(app, token("rider:8"))
        time.sleep(0.2)
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics").read().decode()
        assert 'gateway_connections{party="rider"} 1.0' in text
    assert urllib.request.urlopen(f"http://127.0.0.1:{mport}/readyz").status == 200
