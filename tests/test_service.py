"""Service workers behind the router: balancing, retries on worker death, TTLs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import orjson
import pytest

from router.client import Sender
from router.protocol import ErrorCode
from workers.service import ServiceWorker

from conftest import ROOT

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
        time.sleep(0.3)
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
        time.sleep(0.2)
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
