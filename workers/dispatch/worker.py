"""The dispatch service worker: ranks riders for an order on request.

It keeps every rider's live state (position, load, remaining stops) in a grid index,
fed by the riders' state updates that the city publishes to the channel
``dispatch:riders`` as conflated LOCATION messages (only the newest per rider waits), and
answers ``dispatch`` REQUESTs:

    request  {"order": {"id", "merchant": [x, y], "dropoff": [x, y], "ready_at",
              "promised_at"}, "now": s, "exclude": [rider ids], "limit": n}
    reply    {"candidates": [{"rider", "score", "pickup_at", "deliver_at", "late_s"}, ...],
              "decision_s": s}

    python -m workers.dispatch.worker --router tcp://127.0.0.1:5555 [--metrics-port N]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import time

import orjson
from prometheus_client import REGISTRY, Counter, Histogram

from router import httpd
from router.client import Sender
from router.protocol import Delivery
from workers.service import ServiceWorker

from . import RIDER_CHANNEL, SERVICE
from .scoring import Order, Rider, RiderIndex, Stop, rank

DECISION_SECONDS = Histogram("router_dispatch_decision_seconds",
                             "time to rank riders for one order",
                             buckets=(.0005, .001, .0025, .005, .01, .02, .05, .1, .25))
BAD_UPDATES = Counter("router_dispatch_bad_rider_updates",
                      "rider state updates ignored because they could not be read")

log = logging.getLogger("workers.dispatch")


def parse_rider(payload: bytes) -> Rider:
    """A rider from one state update; ValueError says what is wrong with it."""
    try:
        s = orjson.loads(payload)
        rid, x, y = s["id"], float(s["x"]), float(s["y"])
        route = [Stop((float(p[0]), float(p[1])), float(p[2]), float(p[3]))
                 for p in s.get("route", [])]
        load, capacity = int(s.get("load", 0)), int(s.get("capacity", 2))
        online = bool(s.get("online", True))
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"unreadable rider state ({type(exc).__name__}: {exc})") from None
    if not isinstance(rid, str) or not rid or not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError("rider state needs a non-empty id and finite x, y")
    return Rider(rid, (x, y), route, load, capacity, online)


class DispatchState:
    """Riders as the last state updates described them, and the ranking request."""

    def __init__(self) -> None:
        self.riders = RiderIndex()
        self.bad_updates = 0

    def update(self, delivery: Delivery) -> None:
        """Apply one rider state update (a LOCATION delivery); an unreadable one is
        counted and ignored (anyone may send to the channel: it must not stop dispatch)."""
        try:
            rider = parse_rider(delivery.payload)
        except ValueError as exc:
            self.bad_updates += 1
            BAD_UPDATES.inc()
            if self.bad_updates in (1, 10, 100) or self.bad_updates % 1000 == 0:
                log.warning("ignored rider state from %s: %s (%d ignored so far)",
                            delivery.sender, exc, self.bad_updates)
            return
        self.riders.upsert(rider)

    def decide(self, body: bytes) -> bytes:
        """Answer one dispatch request."""
        t0 = time.perf_counter()
        req = orjson.loads(body)
        o = req["order"]
        order = Order(o["id"], tuple(o["merchant"]), tuple(o["dropoff"]), o["ready_at"],
                      o["promised_at"])
        exclude = set(req.get("exclude", ()))
        limit = req.get("limit", 5)
        ranked = [c for c in rank(order, self.riders, req["now"], limit=limit + len(exclude))
                  if c.rider_id not in exclude][:limit]
        took = time.perf_counter() - t0
        DECISION_SECONDS.observe(took)
        return orjson.dumps({"candidates": [
            {"rider": c.rider_id, "score": round(c.score, 1), "pickup_at": c.pickup_at,
             "deliver_at": c.deliver_at, "late_s": c.late_s} for c in ranked],
            "decision_s": took})


def make_worker(url: str, name: str | None = None, **options) -> ServiceWorker:
    """A connected dispatch worker that receives rider updates and serves requests;
    ``options``: the SDK's (server_key and key for an authenticated router)."""
    name = name or f"dispatch-{os.getpid()}"
    state = DispatchState()
    address = f"worker:{name}"
    worker = ServiceWorker(url, SERVICE, state.decide, name=name, addresses=[address],
                           on_delivery=state.update, **options)
    worker.state = state  # type: ignore[attr-defined]
    with Sender(url, f"{name}-join", **options) as s:  # subscribe to rider state updates
        s.join(RIDER_CHANNEL, [address])
        s.poll(0.05)
    return worker


def main() -> None:
    """Entry point: serve dispatch requests until SIGTERM/SIGINT."""
    ap = argparse.ArgumentParser(description="dispatch service worker")
    ap.add_argument("--router", default="tcp://127.0.0.1:5555")
    ap.add_argument("--name", default=None)
    ap.add_argument("--metrics-port", type=int, default=0)
    ap.add_argument("--server-key", help="an authenticated router's public key file")
    ap.add_argument("--key", help="this worker's secret key file (router keygen)")
    args = ap.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # /metrics, /healthz, /readyz (router/httpd.py): ready once READY went to the router.
    health = httpd.Health()
    ops = httpd.serve(args.metrics_port, "127.0.0.1", REGISTRY, health) \
        if args.metrics_port else None
    stopping = []
    signal.signal(signal.SIGTERM, lambda *a: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *a: stopping.append(1))
    options = {"server_key": args.server_key, "key": args.key} if args.key else {}
    worker = make_worker(args.router, args.name, **options)  # returns after HELLO, WELCOME and READY
    health.set_ready(True)
    log.info("dispatch worker %s ready", worker.name)
    worker.run(lambda: health.beat() or bool(stopping))
    health.stopping()
    worker.close()
    if ops:
        ops.close()


if __name__ == "__main__":
    main()
