"""The order lifecycle through real router and worker processes: offers, reassignment,
and a short seeded city where every order is delivered and its history is complete."""

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
from router.protocol import MsgClass, Role
from workers.dispatch.worker import RIDER_CHANNEL
from workers.orders import INBOX, OrderService, OrderState
from workers.sim.city import City, Config

from conftest import ROOT


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
    """Rider states on the dispatch channel, as the city publishes them."""
    with Sender(url, "rider-states") as s:
        for rid, (x, y) in riders.items():
            s.send(RIDER_CHANNEL, {"id": rid, "x": x, "y": y, "load": 0, "capacity": 2,
                                   "route": []}, msg_class=MsgClass.LOCATION, key=rid,
                   channel=True)
        s.poll(0.3)


def test_silent_rider_offer_moves_to_next_within_a_second_of_ttl(router, dispatch_worker):
    publish_riders(router.url, {"rider:near": (100.0, 0.0), "rider:far": (900.0, 0.0)})
    time.sleep(0.3)
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
        assert 1.5 <= gap < 1.5 + 1.0, f"next offer {gap:.2f}s after the first (TTL 1.5 s)"
        assert svc.offer_delays and max(svc.offer_delays) < 1.0
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
    time.sleep(0.5)  # the router writes history between slices
    hist = History(Path(router.data_dir) / "history.db")
    for order in city.delivered:
        kinds = [e["kind"] for e in hist.timeline(order.id) if e["event"] == "accepted"]
        for step in ("order.created", "order.accepted", "dispatch.offer", "dispatch.accepted",
                     "order.picked_up", "order.delivered"):
            assert step in kinds, f"order {order.id}: {step} missing from history {kinds}"
        finals = [e for e in hist.timeline(order.id) if e["event"] == "final"
                  and e["kind"] == "order.delivered"]
        assert finals and finals[-1]["status"] == "DELIVERED"


def wait_for(ep: Endpoint, kind: str, svc: OrderService, seconds: float = 5.0):
    """The next delivery of ``kind`` to ``ep`` (acked), stepping the service meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        svc.step(0.01)
        d = ep.recv(timeout=0)
        if d is not None:
            ep.ack(d)
            if d.kind == kind:
                return d
    raise AssertionError(f"no {kind} for {ep.session.name} within {seconds}s")


@contextlib.contextmanager
def offered_order(url: str, n: int, offer_ttl_ms: int):
    """Order ``n``: placed by user:<n> at merchant:<n>, confirmed, and offered to
    rider:<n> (the only rider). Yields the service and the parties' connections."""
    publish_riders(url, {f"rider:{n}": (100.0, 0.0)})
    time.sleep(0.3)
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
        assert svc.orders["77"].state == "cancelled"
        apps.send(INBOX, {"type": "rider.accept", "order": "77", "rider": "rider:77"})
        wait_for(rider, "order.cancelled", svc)  # a late accept is told, not assigned
        end = time.monotonic() + 1.5  # past the offer TTL: no new offer goes out
        while time.monotonic() < end:
            svc.step(0.01)
            d = rider.recv(timeout=0)
            assert d is None or d.kind != "dispatch.offer", d
        assert svc.orders["77"].rider is None


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
