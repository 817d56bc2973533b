"""The dispatch service worker: assigns riders to the pending orders, together.

It keeps every rider's live state (position, load, remaining stops) in a grid index,
fed by the riders' state updates that the city publishes to the channel
``dispatch:riders`` as conflated LOCATION messages (only the newest per rider waits), and
answers ``dispatch`` REQUESTs:

    request  {"order": {"id", "merchant": [x, y], "dropoff": [x, y], "ready_at",
              "promised_at"}, "now": s, "exclude": [rider ids], "limit": n}
    reply    {"candidates": [{"rider", "score", "pickup_at", "deliver_at", "late_s"}, ...],
              "decision_s": s, "batch": n}

Requests are held and answered together every ``--batch-interval`` s (or when
``--max-batch`` wait): one min-cost assignment of the batch's orders to riders
(workers/dispatch/batch.py) names each order's rider, which its reply lists first; the
rest of the list are that order's other candidates, best first, for the order service
to offer to if the first declines or times out (an order whose offer failed comes back
as a new request and joins the next batch). ``--batch-interval 0`` answers each request
alone, as soon as it comes.

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
from . import batch
from .scoring import Candidate, Order, Rider, RiderIndex, Stop, rank

DECISION_SECONDS = Histogram("router_dispatch_decision_seconds",
                             "time to decide one order (a batch's solve time over its orders)",
                             buckets=(.0005, .001, .0025, .005, .01, .02, .05, .1, .25))
BATCH_SIZE = Histogram("router_dispatch_batch_size", "orders assigned together in one batch",
                       buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500))
BATCH_SOLVE_SECONDS = Histogram("router_dispatch_batch_solve_seconds",
                                "time to score and assign one batch",
                                buckets=(.001, .005, .01, .025, .05, .1, .2, .5, 1))
BATCH_WAIT_SECONDS = Histogram("router_dispatch_batch_wait_seconds",
                               "time a request waited in the worker for its batch",
                               buckets=(.01, .05, .1, .25, .5, 1, 2, 5))
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

    def decide_batch(self, bodies: list[bytes]) -> list[bytes]:
        """Answer dispatch requests together: one assignment, then each reply lists its
        order's rider first and its other candidates after."""
        t0 = time.perf_counter()
        reqs = [orjson.loads(b) for b in bodies]
        orders = [_order(r["order"]) for r in reqs]
        exclude = [set(r.get("exclude", ())) for r in reqs]
        now = max(r["now"] for r in reqs)
        decided = batch.assign(orders, self.riders, now, exclude=exclude)
        chosen = {a.index: a.candidate for a in decided.assignments}
        taken = {c.rider_id for c in chosen.values()}
        for rider in decided.loaded.values():   # until their next state update says so
            self.riders.upsert(rider)
        took = time.perf_counter() - t0
        BATCH_SIZE.observe(len(reqs))
        BATCH_SOLVE_SECONDS.observe(took)
        out = []
        for i, req in enumerate(reqs):
            first = [chosen[i]] if i in chosen else []
            rest = [c for c in decided.ranked[i] if c.rider_id not in taken]
            out.append(_reply((first + rest)[:req.get("limit", 5)], took / len(reqs),
                              len(reqs)))
            DECISION_SECONDS.observe(took / len(reqs))
        return out

    def decide(self, body: bytes) -> bytes:
        """Answer one dispatch request."""
        t0 = time.perf_counter()
        req = orjson.loads(body)
        order = _order(req["order"])
        exclude = set(req.get("exclude", ()))
        limit = req.get("limit", 5)
        ranked = [c for c in rank(order, self.riders, req["now"], limit=limit + len(exclude))
                  if c.rider_id not in exclude][:limit]
        took = time.perf_counter() - t0
        DECISION_SECONDS.observe(took)
        return _reply(ranked, took, 1)


def _order(o: dict) -> Order:
    return Order(o["id"], tuple(o["merchant"]), tuple(o["dropoff"]), o["ready_at"],
                 o["promised_at"])


def _reply(cands: list[Candidate], decision_s: float, batch_size: int) -> bytes:
    return orjson.dumps({"candidates": [
        {"rider": c.rider_id, "score": round(c.score, 1), "pickup_at": c.pickup_at,
         "deliver_at": c.deliver_at, "late_s": c.late_s} for c in cands],
        "decision_s": decision_s, "batch": batch_size})


def make_worker(url: str, name: str | None = None, batch_interval: float = 1.0,
                max_batch: int = 256, **options) -> ServiceWorker:
    """A connected dispatch worker that receives rider updates and serves requests in
    batches (``batch_interval`` 0: one by one); ``options``: the SDK's (server_key and
    key for an authenticated router)."""
    name = name or f"dispatch-{os.getpid()}"
    state = DispatchState()
    address = f"worker:{name}"
    batching = {"batch_handler": state.decide_batch, "batch_interval": batch_interval,
                "max_batch": max_batch, "on_batch_wait": BATCH_WAIT_SECONDS.observe} \
        if batch_interval > 0 else {}
    worker = ServiceWorker(url, SERVICE, state.decide, name=name, addresses=[address],
                           on_delivery=state.update, **batching, **options)
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
    ap.add_argument("--batch-interval", type=float, default=1.0, metavar="S",
                    help="assign the requests that came within S seconds together "
                    "(0: each alone, at once; default %(default)s)")
    ap.add_argument("--max-batch", type=int, default=256, metavar="N",
                    help="answer a batch early once N requests wait (default %(default)s)")
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
    worker = make_worker(args.router, args.name, args.batch_interval, args.max_batch,
                         **options)  # returns after HELLO, WELCOME and READY
    health.set_ready(True)
    log.info("dispatch worker %s ready", worker.name)
    worker.run(lambda: health.beat() or bool(stopping))
    health.stopping()
    worker.close()
    if ops:
        ops.close()


if __name__ == "__main__":
    main()
