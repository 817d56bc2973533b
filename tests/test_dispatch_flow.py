"""The order lifecycle through real router and worker processes: offers, reassignment,
and a short seeded city where every order is delivered and its history is complete."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from router.client import Endpoint, Sender
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
    cfg = Config(seed=5, merchants=10, riders=25, users=50, size_m=3000, base_per_min=6,
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
