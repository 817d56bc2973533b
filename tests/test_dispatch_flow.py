"""The order lifecycle through real router and worker processes: offers, reassignment,
a short seeded city where every order is delivered and its history is complete, and
late, repeated and unknown messages (counted and ignored, the service keeps working),
and the dispatch backoff when no rider is free."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from router.client import Endpoint, Sender, payload_json as payload_of
from router.history import History
from router.protocol import ErrorCode, MsgClass, Role, Status
from workers.dispatch.worker import RIDER_CHANNEL
from workers.orders import IGNORED_REASONS, INBOX, OrderService, OrderState
from workers.service import ServiceWorker
from workers.sim.city import City, Config

from support import ROOT, wait_until


@pytest.fixture
def dispatch_worker(router):
    p = subprocess.Popen([sys.executable, "-m", "workers.dispatch.worker", "--router",
                          router.url, "--name", "dispatch-t"], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    router.wait_for_log("worker ready for dispatch")
    yield p
    p.terminate()
    p.wait(10)


def publish_riders(url: str, riders: dict[str, tuple[float, float]]) -> None:
    """Rider states on the dispatch channel, as the city publishes them; returns once the
    dispatch worker has them (it ranks every one for an order at the origin)."""
    with Sender(url, "rider-states") as s:
        for rid, (x, y) in riders.items():
            s.send(RIDER_CHANNEL, {"id": rid, "x": x, "y": y, "load": 0, "capacity": 2,
                                   "route": []}, msg_class=MsgClass.LOCATION, key=rid,
                   channel=True)
        probe = {"order": {"id": "probe", "merchant": [0, 0], "dropoff": [100, 100],
                           "ready_at": 0, "promised_at": 1800}, "now": 0, "limit": 100}

        def ranked() -> bool:
            reply = s.request("dispatch", probe, ttl_ms=2000)
            return reply.code == ErrorCode.NONE and set(riders) <= {
                c["rider"] for c in orjson.loads(reply.payload)["candidates"]}
        wait_until(ranked, 5, f"the dispatch worker to have the states of {sorted(riders)}")


def test_silent_rider_offer_moves_to_next_within_a_second_of_ttl(router, dispatch_worker):
    publish_riders(router.url, {"rider:near": (100.0, 0.0), "rider:far": (900.0, 0.0)})
    riders = Endpoint(router.url, ["rider:near", "rider:far"], role=Role.GATEWAY, name="riders")
    merchant = Endpoint(router.url, ["merchant:1"])
    svc = OrderService(router.url, offer_ttl_ms=1500, clock=time.time)
    apps = Sender(router.url, "apps")
    try:
        now = time.time()
        svc.place(OrderState("42", "user:1", "merchant:1", (0.0, 0.0), (500.0, 500.0),
                             now + 600, now + 1800), ["noodles"])
        offers: list[tuple[str, float]] = []
        deadline = time.monotonic() + 15
        confirmed = False
        while time.monotonic() < deadline and len(offers) < 2:
            svc.step(0.01)
            d = merchant.recv(timeout=0)
            if d is not None and d.kind == "order.created" and not confirmed:
                merchant.ack(d)
                confirmed = True
                apps.send(INBOX, {"type": "merchant.confirmed", "order": "42"})
            d = riders.recv(timeout=0)
            if d is not None and d.kind == "dispatch.offer":
                riders.ack(d)
                offers.append((d.address, time.monotonic()))  # and never answer
        assert [a for a, _ in offers] == ["rider:near", "rider:far"]
        gap = offers[1][1] - offers[0][1]
        # receive times jitter by a loop pass or two: the service's own clock says exactly
        # that it moved on after the TTL (offer_delays >= 0), and within a second of it
        assert 1.4 <= gap < 1.5 + 1.0, f"next offer {gap:.2f}s after the first (TTL 1.5 s)"
        assert svc.offer_delays and 0 <= min(svc.offer_delays) and max(svc.offer_delays) < 1.0
    finally:
        for c in (riders, merchant, apps):
            c.close()
        svc.close()


def test_seeded_city_delivers_every_order_with_complete_history(router, dispatch_worker):
    cfg = Config(seed=5, cancel=0.0, merchants=10, riders=25, users=50, size_m=3000, base_per_min=6,
                 speed=120, late_confirm=0.0, weak_network=0.0, offer_ttl_ms=2000,
                 max_orders=8)
    city = City(router.url, cfg)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and (city.placed < 8 or city.open_orders()):
            city.step()
            time.sleep(0.01)
        assert city.placed == 8 and city.open_orders() == 0, (
            f"{city.open_orders()} orders still open: "
            f"{[(o.id, o.state) for o in city.service.orders.values()]}")
        assert len(city.delivered) == 8
        city.run(1.0)  # the parties receive and ack the last order.delivered
    finally:
        city.close()
    hist = History(Path(router.data_dir) / "history.db")
    wait_until(lambda: all(any(e["event"] == "final" and e["kind"] == "order.delivered"
                               for e in hist.timeline(o.id)) for o in city.delivered), 5,
               "each order's final order.delivered event in the history (written between "
               "loop slices)")
    for order in city.delivered:
        kinds = [e["kind"] for e in hist.timeline(order.id) if e["event"] == "accepted"]
        for step in ("order.created", "order.accepted", "dispatch.offer", "dispatch.accepted",
                     "order.picked_up", "order.delivered"):
            assert step in kinds, f"order {order.id}: {step} missing from history {kinds}"
        finals = [e for e in hist.timeline(order.id) if e["event"] == "final"
                  and e["kind"] == "order.delivered"]
        assert finals and finals[-1]["status"] == "DELIVERED"


def wait_for(ep: Endpoint, kind: str, svc: OrderService, seconds: float = 5.0, pump=()):
    """The next delivery of ``kind`` to ``ep`` (acked), stepping the service (and
    pumping ``pump``'s in-process workers) meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        svc.step(0.01)
        for p in pump:
            p.pump()
        d = ep.recv(timeout=0)
        if d is not None:
            ep.ack(d)
            if d.kind == kind:
                return d
    raise AssertionError(f"no {kind} for {ep.name} within {seconds}s")


@contextlib.contextmanager
def offered_order(url: str, n: int, offer_ttl_ms: int):
    """Order ``n``: placed by user:<n> at merchant:<n>, confirmed, and offered to
    rider:<n> (the only rider). Yields the service and the parties' connections."""
    publish_riders(url, {f"rider:{n}": (100.0, 0.0)})
    parties = [Endpoint(url, [f"{who}:{n}"]) for who in ("rider", "merchant", "user")]
    rider, merchant, user = parties
    svc = OrderService(url, offer_ttl_ms=offer_ttl_ms, clock=time.time)
    apps = Sender(url, "apps")
    try:
        now = time.time()
        svc.place(OrderState(str(n), f"user:{n}", f"merchant:{n}", (0.0, 0.0),
                             (500.0, 500.0), now + 600, now + 1800), ["dumplings"])
        wait_for(merchant, "order.created", svc)
        apps.send(INBOX, {"type": "merchant.confirmed", "order": str(n)})
        wait_for(rider, "dispatch.offer", svc)
        yield svc, apps, rider, merchant, user
    finally:
        for c in (*parties, apps):
            c.close()
        svc.close()


def test_cancel_before_pickup_withdraws_the_offer_and_tells_every_party(
        router, dispatch_worker):
    with offered_order(router.url, 77, offer_ttl_ms=1000) as (svc, apps, rider, merchant, user):
        apps.send(INBOX, {"type": "user.cancel", "order": "77", "reason": "ordered twice"})
        assert payload_of(wait_for(rider, "dispatch.offer_withdrawn", svc)) == {"order": "77"}
        for party in (user, merchant):
            d = wait_for(party, "order.cancelled", svc)
            assert payload_of(d) == {"order": "77", "by": "user", "reason": "ordered twice"}
        assert "77" not in svc.orders and svc.find("77").state == "cancelled"
        apps.send(INBOX, {"type": "rider.accept", "order": "77", "rider": "rider:77"})
        wait_for(rider, "order.cancelled", svc)  # a late accept is told, not assigned
        assert svc.ignored["after_cancel"] == 1
        end = time.monotonic() + 1.5  # past the offer TTL: no new offer goes out
        while time.monotonic() < end:
            svc.step(0.01)
            d = rider.recv(timeout=0)
            assert d is None or d.kind != "dispatch.offer", d
        assert svc.find("77").rider is None
        assert svc.offers["timed_out"] == 0, "a withdrawn offer must not time out later"
        assert [o.id for o in svc.take_finished()] == ["77"]


def test_cancel_after_pickup_is_refused(router, dispatch_worker):
    with offered_order(router.url, 78, offer_ttl_ms=3000) as (svc, apps, rider, merchant, user):
        apps.send(INBOX, {"type": "rider.accept", "order": "78", "rider": "rider:78"})
        wait_for(rider, "dispatch.accepted", svc)
        apps.send(INBOX, {"type": "rider.picked_up", "order": "78"})
        wait_for(user, "order.picked_up", svc)
        apps.send(INBOX, {"type": "user.cancel", "order": "78"})
        assert payload_of(wait_for(user, "order.cancel_refused", svc)) == {
            "order": "78", "state": "picked_up"}
        assert svc.orders["78"].state == "picked_up"


# ---- late, repeated and unknown messages ----------------------------------------------------


class HeldDispatch:
    """A dispatch worker in the test process, answering only when pumped, with the
    candidates the test sets; ``asked`` counts the requests it served."""

    def __init__(self, url: str) -> None:
        self.candidates: list[str] = []
        self.asked = 0
        self.worker = ServiceWorker(url, "dispatch", self._answer, name="held-dispatch")

    def _answer(self, body: bytes) -> bytes:
        self.asked += 1
        return orjson.dumps({"candidates": [{"rider": r} for r in self.candidates]})

    def pump(self) -> None:
        """Answer what has arrived."""
        self.worker.serve_once(0)


@pytest.fixture
def held_dispatch(router):
    held = HeldDispatch(router.url)
    router.wait_for_log("worker ready for dispatch")
    yield held
    held.worker.close()


def step_until(svc: OrderService, cond, seconds: float = 5.0, pump=()) -> None:
    """Step the service (and pump ``pump``'s workers) until ``cond()`` holds."""
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        svc.step(0.01)
        for p in pump:
            p.pump()


def drain(ep: Endpoint, svc: OrderService, seconds: float, pump=()) -> list[str]:
    """The kinds ``ep`` receives (acked) within ``seconds``, stepping the service."""
    kinds, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        svc.step(0.01)
        for p in pump:
            p.pump()
        while (d := ep.recv(timeout=0)) is not None:
            ep.ack(d)
            kinds.append(d.kind)
    return kinds


@contextlib.contextmanager
def parties(url: str, n: int, riders: tuple[str, ...] = ()):
    """A service with order ``n`` placed (user:<n> at merchant:<n>, not yet confirmed),
    the parties' connections and an app sender."""
    eps = [Endpoint(url, [f"merchant:{n}"]), Endpoint(url, [f"user:{n}"]),
           Endpoint(url, list(riders) or [f"rider:{n}"], role=Role.GATEWAY, name="riders")]
    svc = OrderService(url, offer_ttl_ms=1000, clock=time.time, retry_base_s=0.5)
    apps = Sender(url, "apps")
    try:
        now = time.time()
        svc.place(OrderState(str(n), f"user:{n}", f"merchant:{n}", (0.0, 0.0),
                             (500.0, 500.0), now + 600, now + 1800), ["bao"])
        wait_for(eps[0], "order.created", svc)
        yield svc, apps, *eps
    finally:
        for c in (*eps, apps):
            c.close()
        svc.close()


def test_dispatch_reply_after_cancel_is_counted_and_the_service_goes_on(router, held_dispatch):
    held_dispatch.candidates = ["rider:90"]
    with parties(router.url, 90) as (svc, apps, merchant, user, riders):
        apps.send(INBOX, {"type": "merchant.confirmed", "order": "90"})
        step_until(svc, lambda: svc.pending_requests)  # dispatch is thinking ...
        apps.send(INBOX, {"type": "user.cancel", "order": "90"})
        step_until(svc, lambda: "90" not in svc.orders)  # ... the order is cancelled ...
        step_until(svc, lambda: svc.ignored["late_reply"] == 1, pump=[held_dispatch])
        assert held_dispatch.asked == 1  # ... and the reply for it came late
        assert "dispatch.offer" not in drain(riders, svc, 0.5)
        # a reply to a request id the service never had pending
        svc.sender.submit("dispatch", {"order": {"id": "x"}})
        step_until(svc, lambda: svc.ignored["unknown_reply"] == 1, pump=[held_dispatch])
        # the service still works: the next order is offered to the rider
        now = time.time()
        svc.place(OrderState("91", "user:90", "merchant:90", (0.0, 0.0), (9.0, 9.0),
                             now + 600, now + 1800), ["tea"])
        wait_for(merchant, "order.created", svc)
        apps.send(INBOX, {"type": "merchant.confirmed", "order": "91"})
        step_until(svc, lambda: svc.find("91").offer_to == "rider:90", pump=[held_dispatch])
        assert payload_of(wait_for(riders, "dispatch.offer", svc))["order"] == "91"


def test_accept_after_the_offer_moved_on_is_withdrawn_and_the_next_rider_gets_it(
        router, held_dispatch):
    held_dispatch.candidates = ["rider:a", "rider:b"]
    with parties(router.url, 92, riders=("rider:a", "rider:b")) as (
            svc, apps, merchant, user, riders):
        apps.send(INBOX, {"type": "merchant.confirmed", "order": "92"})
        step_until(svc, lambda: svc.find("92").offer_to == "rider:b", seconds=5,
                   pump=[held_dispatch])  # rider:a stayed silent past the 1 s TTL
        apps.send(INBOX, {"type": "rider.accept", "order": "92", "rider": "rider:a"})
        d = wait_for(riders, "dispatch.offer_withdrawn", svc)
        assert (d.address, payload_of(d)) == ("rider:a", {"order": "92"})
        assert svc.ignored["stale_offer"] == 1 and svc.find("92").rider is None
        apps.send(INBOX, {"type": "rider.reject", "order": "92", "rider": "rider:a"})
        apps.send(INBOX, {"type": "rider.accept", "order": "92", "rider": "rider:b"})
        apps.send(INBOX, {"type": "rider.accept", "order": "92", "rider": "rider:b"})
        assert payload_of(wait_for(user, "dispatch.accepted", svc)) == {
            "order": "92", "rider": "rider:b"}
        step_until(svc, lambda: svc.ignored["duplicate"] == 1)
        assert svc.ignored["stale_offer"] == 2 and svc.find("92").rider == "rider:b"


def test_events_after_delivery_for_unknown_orders_and_out_of_order_are_ignored(
        router, held_dispatch):
    held_dispatch.candidates = ["rider:93"]
    with parties(router.url, 93) as (svc, apps, merchant, user, riders):
        for ev in ({"type": "rider.picked_up", "order": "93", "rider": "rider:93"},  # too early
                   {"type": "merchant.confirmed", "order": "93"},
                   {"type": "merchant.confirmed", "order": "93"},  # repeated
                   {"type": "rider.picked_up", "order": "nope", "rider": "rider:93"},
                   {"type": "rider.delivered", "order": "nope", "rider": "rider:93"}):
            apps.send(INBOX, ev)
        step_until(svc, lambda: svc.find("93").offer_to == "rider:93", pump=[held_dispatch])
        apps.send(INBOX, {"type": "rider.accept", "order": "93", "rider": "rider:93"})
        apps.send(INBOX, {"type": "rider.picked_up", "order": "93", "rider": "rider:other"})
        apps.send(INBOX, {"type": "rider.picked_up", "order": "93", "rider": "rider:93"})
        apps.send(INBOX, {"type": "rider.picked_up", "order": "93", "rider": "rider:93"})
        apps.send(INBOX, {"type": "rider.delivered", "order": "93", "rider": "rider:93"})
        wait_for(user, "order.delivered", svc)
        # after delivery: a repeated delivery, a late accept by another rider, a cancel
        for ev in ({"type": "rider.delivered", "order": "93", "rider": "rider:93"},
                   {"type": "rider.accept", "order": "93", "rider": "rider:late"},
                   {"type": "user.cancel", "order": "93"}):
            apps.send(INBOX, ev)
        assert payload_of(wait_for(user, "order.cancel_refused", svc)) == {
            "order": "93", "state": "delivered"}
        # chat on the order's channel after delivery: the router refuses it, nothing breaks
        mid = apps.send("order:93", {"text": "thanks"}, kind="chat", msg_class=MsgClass.CHAT,
                        channel=True, key="order:93")
        r = apps.wait(mid, Status.DELIVERED, timeout=3)
        assert (r.status, r.code) == (Status.REFUSED, ErrorCode.UNKNOWN_CHANNEL)
        # not events at all
        apps.send(INBOX, b"not json")
        apps.send(INBOX, {"type": "rider.teleported", "order": "93"})
        apps.send(INBOX, {"type": "rider.accept"})
        apps.send(INBOX, {"type": ["rider.accept"], "order": "93"})
        apps.send(INBOX, {"type": "rider.accept", "order": "93", "rider": "r" * 300})
        apps.send(INBOX, {"type": "rider.accept", "order": "93", "rider": "rider 93"})
        step_until(svc, lambda: svc.ignored["malformed"] == 6)
        assert dict(svc.ignored) == {"out_of_order": 2, "duplicate": 2, "unknown_order": 2,
                                     "after_delivery": 3, "malformed": 6}, svc.ignored
        assert set(svc.ignored) <= set(IGNORED_REASONS)
        assert svc.find("93").state == "delivered"
        assert [o.id for o in svc.take_finished()] == ["93"]
        assert held_dispatch.asked == 1  # the repeated confirm did not ask again


# ---- dispatch backoff -------------------------------------------------------------------------


def test_dispatch_is_retried_with_backoff_when_no_rider_is_free(router, held_dispatch):
    """With nobody free, the service asks again after 0.5, 1, 2, 4 s (not at once, as it
    did: ~100 requests/s per order); a rider free later gets the offer at the next ask."""
    with parties(router.url, 94) as (svc, apps, merchant, user, riders):
        apps.send(INBOX, {"type": "merchant.confirmed", "order": "94"})
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5.0:
            svc.step(0.01)
            held_dispatch.pump()
        # asks at ~0, 0.5, 1.5, 3.5 s (4.0-4.5 s on a slow box: 3 or 4 in 5 s)
        assert 3 <= held_dispatch.asked <= 5, held_dispatch.asked
        assert svc.dispatch["first"] == 1 and svc.dispatch["retry"] == held_dispatch.asked - 1
        assert svc.dispatch["empty"] == held_dispatch.asked
        held_dispatch.candidates = ["rider:94"]  # a rider becomes free
        d = wait_for(riders, "dispatch.offer", svc, seconds=6.0, pump=[held_dispatch])
        assert payload_of(d)["order"] == "94"
        assert svc.find("94").empty_replies == 0  # the backoff starts over next time


def test_dispatch_without_any_worker_fails_and_is_retried_with_backoff(router):
    with parties(router.url, 95) as (svc, apps, merchant, user, riders):
        svc.request_ttl_ms = 300  # NO_SERVICE after 0.3 s
        apps.send(INBOX, {"type": "merchant.confirmed", "order": "95"})
        end = time.monotonic() + 4.0
        while time.monotonic() < end:
            svc.step(0.01)
        # failures at ~0.3 s, then asks at 0.8 (+0.3), 2.1 (+0.3), 4.4: 2-4 failures
        assert 2 <= svc.dispatch["failed"] <= 4, svc.dispatch
        assert svc.dispatch["retry"] in (svc.dispatch["failed"] - 1, svc.dispatch["failed"])


def test_unreadable_rider_states_do_not_stop_dispatch(router, dispatch_worker):
    with Sender(router.url, "rider-states") as s:
        for bad in (b"not json", {"id": "rider:bad"}, {"id": "rider:nan", "x": "nan", "y": 0},
                    {"id": "rider:r", "x": 1, "y": 2, "route": [[1, 2]]}, [1, 2]):
            s.send(RIDER_CHANNEL, bad, msg_class=MsgClass.LOCATION, key="bad", channel=True)
        s.poll(0.2)
    publish_riders(router.url, {"rider:ok": (10.0, 0.0)})
    with Sender(router.url, "asker") as s:
        reply = s.request("dispatch", {"order": {"id": "1", "merchant": [0, 0],
                                                 "dropoff": [100, 100], "ready_at": 0,
                                                 "promised_at": 1800}, "now": 0, "limit": 5})
    assert reply.code == ErrorCode.NONE, reply
    assert [c["rider"] for c in orjson.loads(reply.payload)["candidates"]] == ["rider:ok"]
    assert dispatch_worker.poll() is None, "the dispatch worker died"


def test_retries_of_many_waiting_orders_share_one_budget(router, held_dispatch):
    """30 orders nobody can take: each backs off, and together they retry at most
    ``retry_rate`` per second (without the budget: ~30 x 3 retries in these 3 s)."""
    with parties(router.url, 96) as (svc, apps, merchant, user, riders):
        svc.retry_base_s, svc.retry_cap_s, svc.retry_rate = 0.2, 0.4, 5.0
        now = time.time()
        for i in range(30):
            svc.place(OrderState(f"96-{i}", "user:96", "merchant:96", (0.0, 0.0), (9.0, 9.0),
                                 now + 600, now + 1800), ["rice"])
        for i in range(30):
            apps.send(INBOX, {"type": "merchant.confirmed", "order": f"96-{i}"})
        step_until(svc, lambda: svc.dispatch["first"] == 30, pump=[held_dispatch])
        t0, retried0 = time.monotonic(), svc.dispatch["retry"]
        while time.monotonic() - t0 < 3.0:
            svc.step(0.01)
            held_dispatch.pump()
        retried = svc.dispatch["retry"] - retried0
        assert 5 <= retried <= 5 * 3 + 5 + 1, retried  # rate x time + one second's burst
        assert svc.dispatch["empty"] >= 30
