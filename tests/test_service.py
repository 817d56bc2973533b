"""Service workers behind the router: balancing, retries on worker death, TTLs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from router.client import Sender
from router.protocol import ErrorCode
from workers.service import ServiceWorker

from support import ROOT, wait_until

ECHO_WORKER = """
import os, sys, time
sys.path.insert(0, {root!r})
from workers.service import ServiceWorker
def handle(body):
    if body.startswith(b"slow") and os.environ.get("HANG_ON_SLOW"):
        time.sleep(30)  # as if stuck: the test kills this worker mid-request
    return b"%d:" % os.getpid() + body
w = ServiceWorker({url!r}, "echo", handle, name="echo-%d" % os.getpid())
print("ready", flush=True)
w.run()
"""


def start_worker(url: str, hang: bool = False) -> subprocess.Popen:
    env = {**os.environ, **({"HANG_ON_SLOW": "1"} if hang else {})}
    p = subprocess.Popen([sys.executable, "-c", ECHO_WORKER.format(root=str(ROOT), url=url)],
                         stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "ready"
    return p


def test_requests_are_balanced_over_workers(router):
    workers = [start_worker(router.url) for _ in range(2)]
    try:
        router.wait_for_log("worker ready for echo (credit 1), 2 workers")
        with Sender(router.url, "client") as c:
            pids = set()
            for i in range(20):
                r = c.request("echo", f"hello {i}".encode(), ttl_ms=3000)
                assert r.code == ErrorCode.NONE
                pid, body = r.payload.split(b":", 1)
                assert body == f"hello {i}".encode()
                pids.add(int(pid))
            assert pids == {w.pid for w in workers}
    finally:
        for w in workers:
            w.kill()
            w.wait()


def test_worker_killed_mid_request_is_retried_on_another(make_router):
    r = make_router("--heartbeat-ms", "200", "--liveness", "3")
    a = start_worker(r.url, hang=True)
    b = None
    try:
        r.wait_for_log("worker ready for echo (credit 1), 1 workers")
        with Sender(r.url, "client") as c:
            rid = c.submit("echo", b"slow", ttl_ms=10000)
            c.poll(0.5)  # the only worker has taken it and hangs
            b = start_worker(r.url)
            a.send_signal(signal.SIGKILL)
            t0 = time.monotonic()
            reply = None
            while reply is None and time.monotonic() - t0 < 5:
                c.poll(0.05)
                reply = c.take_reply(rid)
            assert reply is not None
            assert reply.code == ErrorCode.NONE
            assert reply.payload == b"%d:slow" % b.pid  # completed on the other worker
            assert time.monotonic() - t0 < 2.0  # dead after 3 x 200 ms, then retried
        r.wait_for_log("worker for echo gone, 1 jobs requeued")
    finally:
        for p in (a, b):
            if p:
                p.kill()
                p.wait()


def test_request_without_worker_gets_no_service_at_ttl(router):
    with Sender(router.url, "client") as c:
        t0 = time.monotonic()
        r = c.request("nobody-home", b"x", ttl_ms=300)
        assert r.code == ErrorCode.NO_SERVICE and b"TTL" in r.payload
        assert 0.25 < time.monotonic() - t0 < 1.5


def test_request_waits_for_a_worker_that_joins_later(router):
    with Sender(router.url, "client") as c:
        rid = c.submit("echo", b"early", ttl_ms=5000)
        c.poll(0.3)
        w = start_worker(router.url)
        try:
            t0 = time.monotonic()
            reply = None
            while reply is None and time.monotonic() - t0 < 5:
                c.poll(0.05)
                reply = c.take_reply(rid)
            assert reply is not None and reply.payload.endswith(b":early")
        finally:
            w.kill()
            w.wait()


FRAGILE_WORKER = """
import logging, sys
sys.path.insert(0, {root!r})
from workers.service import BadRequest, ServiceWorker
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
def handle(body):
    if body == b"bad":
        raise BadRequest("order id must be a number")
    if body == b"dict":
        return {{"not": "bytes"}}
    if body.startswith(b"boom"):
        raise ValueError("no rider in range" + " x" * 2000 * body.count(b"long"))
    return b"ok:" + body
w = ServiceWorker({url!r}, "fragile", handle)
print("ready", flush=True)
w.run()
"""


def test_handler_exception_is_worker_failed_with_a_short_text(router):
    # A handler that raises answers WORKER_FAILED (the worker's fault, not the client's),
    # with the exception's type and message and no traceback; the worker logs the
    # traceback and keeps serving.
    p = subprocess.Popen([sys.executable, "-c", FRAGILE_WORKER.format(root=str(ROOT),
                                                                      url=router.url)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        with Sender(router.url, "client") as c:
            r = c.request("fragile", b"boom", ttl_ms=3000)
            assert r.code == ErrorCode.WORKER_FAILED, r
            assert r.payload == b"fragile: ValueError: no rider in range"
            r = c.request("fragile", b"boom long", ttl_ms=3000)
            assert r.code == ErrorCode.WORKER_FAILED and len(r.payload) <= 520
            assert b"Traceback" not in r.payload
            r = c.request("fragile", b"bad", ttl_ms=3000)  # the request itself was wrong
            assert r.code == ErrorCode.MALFORMED
            assert r.payload == b"fragile: BadRequest: order id must be a number"
            r = c.request("fragile", b"dict", ttl_ms=3000)  # a handler returning a dict
            assert r.code == ErrorCode.WORKER_FAILED and b"TypeError" in r.payload
            r = c.request("fragile", b"fine", ttl_ms=3000)  # still serving
            assert (r.code, r.payload) == (ErrorCode.NONE, b"ok:fine")
    finally:
        p.kill()
        _, err = p.communicate(timeout=10)
    assert "Traceback (most recent call last)" in err and "ValueError: no rider in range" in err
    assert "handler failed for fragile job" in err


def test_worker_acks_reliable_deliveries_it_handles(router):
    # A worker that also binds addresses acks what on_delivery handled; the sender then
    # sees DELIVERED (an ack of a reliable delivery once crashed the worker's loop).
    from router.protocol import MsgClass, Status
    got = []
    w = ServiceWorker(router.url, "dispatch", lambda body: body, addresses=["zone:9"],
                      on_delivery=got.append)
    try:
        with Sender(router.url, "orders") as s:
            mid = s.send("zone:9", {"order": 5}, msg_class=MsgClass.DISPATCH)
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                w.serve_once(0.05)
            assert [d.seq for d in got] == [1]
            rec = None
            while time.monotonic() < deadline:
                w.serve_once(0.05)
                try:
                    rec = s.wait(mid, Status.DELIVERED, timeout=0.05)
                    break
                except TimeoutError:
                    continue
            assert rec is not None and rec.status == Status.DELIVERED
    finally:
        w.close()


# ---- the broker's bounds and figures: a real Broker on a real ROUTER socket --------------

class BrokerRig:
    """A Broker on a ROUTER socket over inproc, fed whatever its DEALER peers send (the
    core's part, frame checks and roles, is covered through real routers elsewhere)."""

    def __init__(self, **kwargs) -> None:
        import zmq
        from router.broker import Broker
        self.ctx = zmq.Context.instance()
        self.url = f"inproc://broker-{id(self)}"
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.bind(self.url)
        self.broker = Broker(self.send, **kwargs)
        self.peers = []
        self.ids: dict[str, bytes] = {}

    def send(self, identity: bytes, header: bytes, payload: bytes) -> bool:
        """The broker's way out (the core's send in the router): straight to the socket."""
        import zmq
        try:
            self.sock.send_multipart([identity, header, payload], zmq.DONTWAIT)
            return True
        except zmq.ZMQError:
            return False

    def peer(self, name: str):
        """A DEALER peer; the routing id the ROUTER gave it is ``self.ids[name]`` (peers
        do not choose theirs: a hardened libzmq would ignore it, docs/PROTOCOL.md §1)."""
        import zmq
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.url)
        s.send(b"")  # read here, not by the broker: tells the ROUTER's id for this peer
        assert self.sock.poll(2000), f"peer {name} never reached the ROUTER"
        self.ids[name] = self.sock.recv_multipart()[0]
        self.peers.append(s)
        return s

    def pump(self, wait_ms: int = 100) -> None:
        """Hand everything the peers sent to the broker."""
        while self.sock.poll(wait_ms):
            ident, header, *rest = self.sock.recv_multipart()
            self.broker.handle(ident, header, rest[0] if rest else b"")
            wait_ms = 20

    def inbox(self, peer) -> list[list[bytes]]:
        out = []
        while peer.poll(100):
            out.append(peer.recv_multipart())
        return out

    def close(self) -> None:
        for s in self.peers:
            s.close(0)
        self.sock.close(0)


@pytest.fixture
def rig():
    made = []

    def make(**kwargs) -> BrokerRig:
        made.append(BrokerRig(**kwargs))
        return made[-1]

    yield make
    for r in made:
        r.close()


def test_stats_list_registered_services_only_with_credit_and_busy(rig):
    from router import protocol as P
    r = rig()
    worker, client = r.peer("w1"), r.peer("c1")
    worker.send(P.encode_ready("dispatch", credit=3))
    for i in range(25):  # made-up names: no per-service figures, one bounded pool
        client.send_multipart([P.encode_request(f"made-up-{i}", 100 + i, 60000), b"?"])
    for i in range(2):
        client.send_multipart([P.encode_request("dispatch", i + 1, 60000), b"job"])
    r.pump()
    st = r.broker.stats()
    assert st["services"] == {"dispatch": {"workers": 1, "waiting": 0, "busy": 2, "credit": 1}}
    assert st["unregistered_waiting"] == 25
    jobs = [P.decode_request(f[0])[0] for f in r.inbox(worker)]
    assert len(jobs) == 2
    worker.send_multipart([P.encode_reply(jobs[0]), b"done"])
    r.pump()
    assert r.broker.stats()["services"]["dispatch"] == {
        "workers": 1, "waiting": 0, "busy": 1, "credit": 2}
    # a worker for one of the made-up names takes over the requests waiting for it
    late = r.peer("w2")
    late.send(P.encode_ready("made-up-7"))
    r.pump()
    assert [f[1] for f in r.inbox(late)] == [b"?"]
    st = r.broker.stats()
    assert st["unregistered_waiting"] == 24 and set(st["services"]) == {"dispatch", "made-up-7"}
    for key in ("services", "replies", "expired", "no_service", "failed", "latency_buckets",
                "latency_bounds", "latency_sum", "errors", "errors_suppressed"):
        assert key in st


def test_requests_for_unregistered_names_are_bounded(rig):
    from router import protocol as P
    from router.protocol import ErrorCode
    r = rig(max_unregistered=5)
    client = r.peer("c1")
    for i in range(8):
        client.send_multipart([P.encode_request(f"nobody-{i}", i + 1, 0), b"?"])  # no TTL
    r.pump()
    refused = [P.decode_reply(f[0]) for f in r.inbox(client)]
    assert refused == [(6, ErrorCode.NO_SERVICE), (7, ErrorCode.NO_SERVICE),
                       (8, ErrorCode.NO_SERVICE)]
    st = r.broker.stats()
    assert st["unregistered_waiting"] == 5 and st["services"] == {} and st["no_service"] == 3
    assert len(r.broker.jobs) == 5


def test_waiting_per_service_is_bounded(rig):
    from router import protocol as P
    from router.protocol import ErrorCode
    r = rig(max_waiting=3)
    worker, client = r.peer("w1"), r.peer("c1")
    worker.send(P.encode_ready("busy", credit=0))
    r.pump()
    for i in range(5):
        client.send_multipart([P.encode_request("busy", i + 1, 0), b"?"])
    r.pump()
    replies = r.inbox(client)
    assert [P.decode_reply(f[0]) for f in replies] == [(4, ErrorCode.QUEUE_FULL),
                                                       (5, ErrorCode.QUEUE_FULL)]
    assert b"retry later" in replies[0][1]
    assert r.broker.stats()["services"]["busy"]["waiting"] == 3


def test_service_table_is_bounded(rig):
    from router import protocol as P
    from router.protocol import ErrorCode
    r = rig(max_services=2)
    a, b, c = r.peer("wa"), r.peer("wb"), r.peer("wc")
    a.send(P.encode_ready("alpha"))
    b.send(P.encode_ready("beta"))
    r.pump()
    c.send(P.encode_ready("gamma"))
    r.pump()
    (err,) = r.inbox(c)
    code, _, text = P.decode_error(err[0], err[1])
    assert code == ErrorCode.SERVICE_LIMIT and "2 services" in text and "gamma" in text
    assert set(r.broker.stats()["services"]) == {"alpha", "beta"}
    r.broker.peer_gone(r.ids["wa"])  # alpha's only worker left: alpha is idle, it makes room
    c.send(P.encode_ready("gamma"))
    r.pump()
    assert r.inbox(c) == []
    assert set(r.broker.stats()["services"]) == {"beta", "gamma"}
    assert r.broker.stats()["errors"] == {int(ErrorCode.SERVICE_LIMIT): 1}


def test_broker_error_counts_and_rate_limit(rig):
    from router import protocol as P
    from router.protocol import ErrorCode
    r = rig(errors_per_second=3)
    bad = r.peer("bad")
    for _ in range(10):
        bad.send(P.prefix(P.Command.READY))
    r.pump()
    codes = [P.decode_error(f[0], f[1])[0] for f in r.inbox(bad)]
    assert codes == [ErrorCode.MALFORMED] * 3 + [ErrorCode.RATE_LIMITED]
    st = r.broker.stats()
    assert st["errors"] == {int(ErrorCode.MALFORMED): 10}  # counted before the limit
    assert (st["errors_rate_limited"], st["errors_suppressed"]) == (1, 6)


def test_made_up_service_names_leave_no_metric_series(make_router):
    # 25 made-up names once left 25 `service` series: only registered services are shown.
    import urllib.request
    from support import free_port
    port = free_port()
    r = make_router("--metrics-port", str(port), "--heartbeat-ms", "500")

    def scrape() -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

    w = start_worker(r.url)
    try:
        with Sender(r.url, "client") as c:
            made_up = {c.submit(f"made-up-{i}", b"x", ttl_ms=200) for i in range(25)}
            assert c.request("echo", b"hi", ttl_ms=3000).code == ErrorCode.NONE

            def all_answered() -> bool:  # each is answered by the end of its 200 ms TTL
                c.poll(0.05)
                made_up.difference_update({m for m in made_up if c.take_reply(m) is not None})
                return not made_up
            wait_until(all_answered, 5, "the made-up services' requests to be answered")
        deadline = time.monotonic() + 5
        while 'router_service_workers{service="echo"} 1.0' not in (text := scrape()):
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
        assert "made-up" not in text
    finally:
        w.kill()
        w.wait()


def test_ttl_zero_waits_at_most_the_maximum(rig):
    import time
    from router import protocol as P
    from router.protocol import ErrorCode
    r = rig(max_wait_ms=200)
    client = r.peer("c1")
    client.send_multipart([P.encode_request("nobody", 1, 0), b"?"])  # TTL 0
    r.pump()
    deadline = time.monotonic() + 2
    while r.broker.jobs and time.monotonic() < deadline:
        r.broker.tick()
        time.sleep(0.02)
    assert [P.decode_reply(f[0]) for f in r.inbox(client)] == [(1, ErrorCode.NO_SERVICE)]


def test_a_departed_clients_requests_are_dropped(rig):
    from router import protocol as P
    r = rig()
    worker, client = r.peer("w1"), r.peer("c1")
    worker.send(P.encode_ready("slow", credit=1))
    for i in range(50):
        client.send_multipart([P.encode_request("slow", i + 1, 0), b"job"])
        client.send_multipart([P.encode_request("nobody", 100 + i, 0), b"?"])
    r.pump()
    assert len(r.broker.jobs) == 100
    r.broker.peer_gone(r.ids["c1"])
    assert r.broker.jobs == {} and r.broker.stats()["unregistered_waiting"] == 0
    assert r.broker.stats()["abandoned"] == 100
    # the worker's answer to the one it held is dropped as late; its credit is free again
    job = P.decode_request(r.inbox(worker)[0][0])[0]
    worker.send_multipart([P.encode_reply(job), b"done"])
    r.pump()
    assert r.broker.stats()["services"]["slow"]["credit"] == 1


def test_requests_held_per_client_are_bounded(rig):
    from router import protocol as P
    from router.protocol import ErrorCode
    r = rig(max_per_client=10)
    greedy, other = r.peer("c1"), r.peer("c2")
    for i in range(15):
        greedy.send_multipart([P.encode_request("nobody", i + 1, 0), b"?"])
    other.send_multipart([P.encode_request("nobody", 1, 0), b"?"])
    r.pump()
    assert [P.decode_reply(f[0]) for f in r.inbox(greedy)] == [
        (i + 1, ErrorCode.QUEUE_FULL) for i in range(10, 15)]
    assert r.inbox(other) == [] and len(r.broker.jobs) == 11


def test_ttl_zero_requests_of_a_client_that_leaves_are_dropped(make_router):
    """2,000 TTL-0 requests to a service nobody serves, then BYE: the router holds
    nothing for them afterwards (they used to wait forever)."""
    import time
    import urllib.request
    from support import Peer, free_port
    from router import protocol as P
    from router.protocol import Command, Role
    port = free_port()
    r = make_router("--metrics-port", str(port))

    def unregistered() -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
        for line in text.decode().splitlines():
            if line.startswith("router_service_unregistered_waiting_requests "):
                return float(line.split()[1])
        raise AssertionError("no router_service_unregistered_waiting_requests in /metrics")

    with Peer(r.url) as c:
        c.hello(Role.SENDER, "leaver")
        for i in range(2000):
            c.send(P.encode_request("nobody.home", i + 1, 0), b"?")
        deadline = time.monotonic() + 10
        while unregistered() < 1000 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert unregistered() == 1000  # the per-connection bound; the rest: QUEUE_FULL
        c.send(P.prefix(Command.BYE))
        deadline = time.monotonic() + 5
        while unregistered() > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert unregistered() == 0


def test_free_workers_are_found_among_thousands_of_busy_ones_and_gone_ones_reaped(rig):
    """The broker keeps the workers with free credit apart, so a request finds one at
    once however many paused (credit 0) workers a flood registered; and workers whose
    connection the core no longer has are dropped by reap() even if their disconnect
    event never came (the 30-minute fuzz lost some when the loop fell behind)."""
    from router import protocol as P
    r = rig()
    paused = [r.peer(f"p{i}") for i in range(300)]
    for p in paused:
        p.send(P.encode_ready("busy", credit=0))
    deadline = time.monotonic() + 5
    while len(r.broker.workers) < 300 and time.monotonic() < deadline:
        r.pump()  # all of them in before the next peer() reads its own first frame
    worker, client = r.peer("w"), r.peer("c")
    worker.send(P.encode_ready("busy", credit=1))
    r.pump()
    svc = r.broker.services["busy"]
    assert len(svc.workers) == 301 and list(svc.free) == [r.ids["w"]]
    client.send_multipart([P.encode_request("busy", 1, 60000), b"one"])
    client.send_multipart([P.encode_request("busy", 2, 60000), b"two"])
    r.pump()
    [first] = r.inbox(worker)  # credit 1: one at a time
    assert first[1] == b"one" and not svc.free
    worker.send_multipart([P.encode_reply(P.decode_request(first[0])[0]), b"ok"])
    r.pump()
    [second] = r.inbox(worker)
    assert second[1] == b"two"
    live = {r.ids["w"], r.ids["c"]}
    while r.broker.reap(lambda ident: ident in live, budget=64):
        pass
    assert set(svc.workers) == {r.ids["w"]} and r.broker.counters["reaped"] == 300


def _batch_worker(url: str, handler, **kw) -> tuple[ServiceWorker, threading.Event]:
    w = ServiceWorker(url, "batched", lambda body: b"alone", name="batcher",
                      batch_handler=handler, **kw)
    stop = threading.Event()
    threading.Thread(target=w.run, args=(stop.is_set,), daemon=True).start()
    return w, stop


def _ask_many(url: str, n: int) -> list:
    """Submit ``n`` requests at once; their replies, in submission order."""
    got: dict = {}
    with Sender(url, "client") as c:
        ids = [c.submit("batched", b"req %d" % i, ttl_ms=5000) for i in range(n)]

        def all_back() -> bool:
            c.poll(0.05)
            got.update((i, r) for i in ids if (r := c.take_reply(i)) is not None)
            return len(got) == n

        wait_until(all_back, 10, f"{n} replies")
    return [got[i] for i in ids]


def test_a_batch_worker_answers_the_requests_of_an_interval_together(router):
    calls: list[list[bytes]] = []
    waits: list[float] = []

    def handler(bodies: list[bytes]) -> list[bytes]:
        calls.append(bodies)
        return [b"batch of %d: " % len(bodies) + b for b in bodies]

    w, stop = _batch_worker(router.url, handler, batch_interval=0.3, max_batch=64,
                            on_batch_wait=waits.append)
    try:
        router.wait_for_log("worker ready for batched (credit 64)")
        replies = _ask_many(router.url, 20)
    finally:
        stop.set()
        w.close()
    assert [r.code for r in replies] == [ErrorCode.NONE] * 20
    assert [r.payload.split(b": ")[1] for r in replies] == [b"req %d" % i for i in range(20)]
    assert len(calls) < 20 and sum(map(len, calls)) == 20      # together, none lost
    assert len(waits) == 20 and max(waits) < 1.0


def test_a_full_batch_goes_at_once_and_a_failing_one_fails_each_request(router):
    def handler(bodies: list[bytes]) -> list[bytes]:
        if b"req 0" in bodies:
            raise ValueError("no rider in range")
        return bodies

    w, stop = _batch_worker(router.url, handler, batch_interval=30.0, max_batch=5)
    try:
        t0 = time.monotonic()
        replies = _ask_many(router.url, 10)   # two full batches, long before 30 s
        took = time.monotonic() - t0
    finally:
        stop.set()
        w.close()
    assert took < 10
    assert all(r.code == ErrorCode.WORKER_FAILED for r in replies[:5])
    assert replies[0].payload == b"batched: ValueError: no rider in range"
    assert [(r.code, r.payload) for r in replies[5:]] == [(ErrorCode.NONE, b"req %d" % i)
                                                         for i in range(5, 10)]
