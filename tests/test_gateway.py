"""The WebSocket gateway end to end: a real router, a real `router gateway` process and
apps speaking docs/GATEWAY.md over real WebSockets (tcp loopback)."""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from router.auth.credentials import TokenKey
from router.client import Endpoint, Sender
from router.protocol import MsgClass, Status

from support import drain, frames_until, start_gateway, token


@pytest.fixture
def gateway(make_router, tmp_path: Path):
    """(router, ws url, http base, metrics port, token(address, ttl))"""
    r = make_router()
    with start_gateway(r, tmp_path) as (url, base, mport):
        yield r, url, base, mport, token


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


def _series(mport: int, name: str) -> dict[str, float]:
    """One metric of the gateway's /metrics by its ``class`` label."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics").read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(name + '{class="'):
            out[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
    return out


def test_every_class_written_is_counted_and_timed(gateway):
    """gateway_messages_out and gateway_e2e_latency_seconds cover best effort too (they
    counted reliable deliveries only)."""
    r, url, _, mport, token = gateway
    with connect(url) as app, Sender(r.url, "feeds") as s:
        hello(app, token("user:12"))
        s.send("user:12", {"o": 1})
        s.send("user:12", {"x": 1}, msg_class=MsgClass.LOCATION, key="rider:1")
        s.send("user:12", {"n": 1}, msg_class=MsgClass.NOTICE)
        got = frames_until(app, 3)
        assert sorted(f["class"] for f in got) == ["LOCATION", "NOTICE", "ORDER"]
    want = {"order": 1.0, "location": 1.0, "notice": 1.0}
    for name in ("gateway_messages_out_total", "gateway_e2e_latency_seconds_count"):
        series = _series(mport, name)
        assert {c: series.get(c) for c in want} == want, (name, series)


class RawApp:
    """A WebSocket app on a bare socket: it does only what a test tells it, so it can
    stop reading, or never answer a ping (every library answers pings by itself)."""

    def __init__(self, url: str, rcvbuf: int = 0) -> None:
        host, port = url.removeprefix("ws://").split("/", 1)[0].split(":")
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect((host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(4096)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def send_json(self, obj: dict) -> None:
        data, mask = json.dumps(obj).encode(), os.urandom(4)
        assert len(data) < 1 << 16
        size = bytes([0x80 | len(data)]) if len(data) < 126 else \
            bytes([0x80 | 126]) + len(data).to_bytes(2, "big")
        self.sock.sendall(bytes([0x81]) + size + mask
                          + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed without a close frame")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frame(self) -> tuple[int, bytes]:
        """The next frame from the gateway: (opcode, payload)."""
        b0, b1 = self._take(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(self._take(2), "big")
        elif n == 127:
            n = int.from_bytes(self._take(8), "big")
        return b0 & 0x0F, self._take(n)

    def close_code(self, max_frames: int = 100_000) -> int:
        """Read on (ignoring data and pings) until the gateway's close frame; its code."""
        for _ in range(max_frames):
            op, payload = self.frame()
            if op == 0x8:
                return int.from_bytes(payload[:2], "big")
        raise AssertionError(f"no close frame in {max_frames} frames")


def test_an_app_that_never_answers_pings_is_closed_with_4006(make_router, tmp_path):
    r = make_router()
    with start_gateway(r, tmp_path, "--ping-interval", "0.5") as (url, _, mport):
        app = RawApp(url)
        app.send_json({"type": "hello", "token": token("user:21")})
        t0 = time.monotonic()
        assert app.close_code() == 4006
        assert 0.5 <= time.monotonic() - t0 < 5
        app.sock.close()
        with connect(url) as live:  # a library client answers pings: it stays
            hello(live, token("user:22"))
            time.sleep(1.6)
            live.send(json.dumps({"type": "ack", "seq": 0}))
            with pytest.raises(TimeoutError):
                live.recv(timeout=0.2)


def test_an_app_that_stops_reading_is_closed_and_resumes_without_loss(make_router, tmp_path):
    """An app holding more than its reliable bound (here 300, under the router's window
    of 1024) unwritten that takes nothing for a second is closed (4003), even though it
    cannot take the close frame; it comes back with last_seq 0 and gets every message,
    in order, once. Pings are off: this is the too-slow watch, not the ping timeout."""
    r = make_router()
    with start_gateway(r, tmp_path, "--max-reliable", "300", "--ping-interval", "0") as (url, _, mport), Sender(r.url, "orders") as s:
        app = RawApp(url, rcvbuf=4096)
        app.send_json({"type": "hello", "token": token("merchant:5")})
        # 8 KB frames: a window (1024) is more than the kernel's socket buffers hold
        n, pad = 3000, "x" * 8000
        for i in range(n):
            s.send("merchant:5", {"n": i, "pad": pad})
        s.flush(30)

        def closed_too_slow() -> bool:
            text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics").read().decode()
            return 'gateway_closed_total{reason="too_slow"} 1.0' in text
        deadline = time.monotonic() + 30
        while not closed_too_slow():
            assert time.monotonic() < deadline, "the unread app was never closed"
            time.sleep(0.2)
        app.sock.close()
        with connect(url, max_size=None) as back:
            hello(back, token("merchant:5"))
            got: list[dict] = []
            while len(got) < n:  # acking as it reads: the router sends a window at a time
                got += frames_until(back, min(500, n - len(got)), timeout=30)
                back.send(json.dumps({"type": "ack", "seq": got[-1]["seq"]}))
            assert [f["data"]["n"] for f in got] == list(range(n))
            with pytest.raises(TimeoutError):
                back.recv(timeout=0.3)


def test_the_long_lived_heap_is_frozen_after_a_full_collection_and_thawed_on_refresh():
    """What survives a full collection is frozen (later collections skip it); a cycle
    that becomes garbage while frozen is found once the refresh thaws the heap."""
    import gc
    import weakref

    from router.gateway.heap import LongLivedHeap

    class Node:
        pass

    pauses = []
    heap = LongLivedHeap(refresh_s=3600, on_pause=lambda s, n: pauses.append((s, n)))
    try:
        node = Node()
        node.me = node  # a cycle: only the collector frees it
        gone = weakref.ref(node)
        gc.collect()
        heap.tick()
        assert gc.get_freeze_count() > 0
        assert pauses and pauses[-1][0] > 0  # each full collection is timed
        del node
        gc.collect()
        assert gone() is not None  # frozen: not looked at
        heap.refresh_s = 0
        heap.tick()
        assert gc.get_freeze_count() == 0
        gc.collect()
        assert gone() is None
    finally:
        heap.close()
    assert gc.get_freeze_count() == 0
