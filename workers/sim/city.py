"""A simulated city: merchants, riders and users exchanging real messages via the router.

Everything a party does goes over the router: merchants get ``order.created`` and
confirm (sometimes late), riders get ``dispatch.offer`` and accept, reject or stay silent,
ride at city speed to the merchant and the customer and report pickup and delivery;
users get their order's news, their rider's position (conflated LOCATION) and chat;
some parties drop off the network for a while and get their backlog when they return.
Users chat on their order's channel now and then, sometimes after it was delivered (the
router refuses those: UNKNOWN_CHANNEL, counted in :attr:`City.app_refusals`).

The city times every message the order service sends, from send to the party's receive
(:attr:`City.latency`, see :mod:`workers.sim.latency`).

Time is simulated and compressible: ``speed`` simulated seconds pass per real second,
starting at ``start_hour``; demand follows a day with peaks at 11:00-13:00 and
17:00-20:00. Everything random comes from one seeded generator.
"""

from __future__ import annotations

import collections
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import orjson

from router.client import Endpoint, Sender
from router.protocol import MsgClass, Receipt, Role, Status
from workers.dispatch import RIDER_CHANNEL
from workers.orders import INBOX, OrderService, OrderState
from workers.sim.latency import E2ELatency

SPEED_MPS = 4.5          # a rider in city traffic
ROUTE_FACTOR = 1.3       # streets are not straight lines


def demand_per_min(hour: float, base: float) -> float:
    """Orders per minute at ``hour`` (0-24): base, x6 at lunch, x8 at dinner, with ramps."""
    def bump(center: float, half_width: float, height: float) -> float:
        """A plateau of ``height`` around ``center`` that fades out over 45 minutes."""
        d = abs(hour - center)
        return height if d <= half_width else height * max(0.0, 1 - (d - half_width) / 0.75)

    return base * (1 + bump(12.0, 1.0, 5.0) + bump(18.5, 1.5, 7.0))


class Clock:
    """Simulated seconds since midnight, running ``speed`` times real time."""

    def __init__(self, start_hour: float, speed: float) -> None:
        self.t0, self.start, self.speed = time.monotonic(), start_hour * 3600, speed

    def __call__(self) -> float:
        return self.start + (time.monotonic() - self.t0) * self.speed

    def label(self) -> str:
        """The simulated time of day as HH:MM."""
        s = int(self()) % 86400
        return f"{s // 3600:02d}:{s % 3600 // 60:02d}"


@dataclass
class SimRider:
    """A rider: position, the stops ahead (x, y, kind, order, ready), and habits."""

    id: str
    x: float
    y: float
    stops: list[tuple[float, float, str, str, float, float]] = field(default_factory=list)
    p_reject: float = 0.08
    p_silent: float = 0.05
    offline_until: float = 0.0
    last_report: float = -1e9

    @property
    def load(self) -> int:
        """Orders this rider carries or is on the way to pick up."""
        return len({s[3] for s in self.stops})


@dataclass
class Config:
    """Size and behaviour of the city."""

    seed: int = 1
    merchants: int = 60
    riders: int = 150
    users: int = 2000
    size_m: float = 8000.0
    base_per_min: float = 4.0         # orders/min outside the peaks
    start_hour: float = 11.0
    speed: float = 30.0               # simulated seconds per real second
    late_confirm: float = 0.1         # merchants that confirm late
    weak_network: float = 0.002       # chance per party per simulated minute to drop off
    report_every_s: float = 10.0      # simulated seconds between rider state reports
    offer_ttl_ms: int = 3000
    max_orders: int = 0               # stop placing after this many (0 = never)
    cancel: float = 0.02              # users who cancel after confirmation, before pickup
    chat: float = 0.2                 # users who chat on their order's channel
    first_order: int = 1              # id of the first order placed (ids count up from it)


class City:
    """The parties of the city and the order service, stepped from one loop."""

    def __init__(self, url: str, cfg: Config, name: str = "city",
                 auth: Callable[[str], dict] | None = None) -> None:
        """``auth(principal)``: SDK options (CURVE keys) for the city's gateway
        (``city-gateway``), apps (``city-apps``) and order service (``orders``); none
        for an open router."""
        auth = auth or (lambda principal: {})
        self.cfg, self.rng = cfg, random.Random(cfg.seed)
        self.clock = Clock(cfg.start_hour, cfg.speed)
        rnd = lambda: (self.rng.uniform(0, cfg.size_m), self.rng.uniform(0, cfg.size_m))  # noqa: E731
        self.merchants = {f"merchant:{i}": rnd() for i in range(cfg.merchants)}
        self.users = {f"user:{i}": rnd() for i in range(cfg.users)}
        self.riders = {f"rider:{i}": SimRider(f"rider:{i}", *rnd()) for i in range(cfg.riders)}
        parties = [*self.merchants, *self.users, *self.riders]
        self.gateway = Endpoint(url, parties, role=Role.GATEWAY, name=f"{name}-gateway",
                                **auth("city-gateway"))
        # what the parties' apps send; a refusal (chat after delivery) is counted by code
        self.app_refusals: collections.Counter[str] = collections.Counter()
        self.apps = Sender(url, f"{name}-apps", on_receipt=self._on_app_receipt,
                           **auth("city-apps"))
        self.latency = E2ELatency()
        service_name = f"{name}-orders"
        self.service = OrderService(url, offer_ttl_ms=cfg.offer_ttl_ms, clock=self.clock,
                                    name=service_name, client_options=auth("orders"),
                                    on_sent=lambda mid: self.latency.sent(service_name, mid))
        self.service.on_place = self._place_for
        self.back_at: dict[str, float] = {}  # party -> when it came back online (monotonic)
        self.timers: list[tuple[float, str, dict]] = []  # (sim time, kind, data)
        self.offline: dict[str, float] = {}
        self.placed = 0
        self.next_order_at = self.clock()
        self.delivered: list[OrderState] = []
        self.cancelled: list[OrderState] = []
        self.received = {"order": 0, "dispatch": 0, "chat": 0, "notice": 0, "location": 0}
        self.unreadable = 0  # deliveries the parties could not make sense of
        self.last = self.clock()

    # ---- the loop ------------------------------------------------------------------------------

    def step(self) -> None:
        """Advance the city by the real time since the last step (call every ~20 ms)."""
        now = self.clock()
        dt, self.last = now - self.last, now
        self._place_orders(now)
        self._deliveries()
        self._fire_timers(now)
        self._move_riders(now, dt)
        self._weak_network(now, dt)
        self.service.step(0)
        self.apps.poll(0)
        for o in self.service.take_finished():
            (self.delivered if o.state == "delivered" else self.cancelled).append(o)

    def run(self, seconds: float, step_s: float = 0.02) -> None:
        """Step for ``seconds`` of real time."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.step()
            time.sleep(step_s)

    def open_orders(self) -> int:
        """Orders not yet delivered or given up."""
        return len(self.service.orders)

    def close(self) -> None:
        """Close every connection."""
        self.service.close()
        self.gateway.close()
        self.apps.close()

    # ---- users place orders --------------------------------------------------------------------

    def _place_orders(self, now: float) -> None:
        cfg = self.cfg
        while now >= self.next_order_at:
            if cfg.max_orders and self.placed >= cfg.max_orders:
                return
            rate = demand_per_min(now / 3600 % 24, cfg.base_per_min) / 60  # per sim second
            self.next_order_at += self.rng.expovariate(rate)
            self._place_one(now)

    def _place_for(self, ev: dict) -> None:
        """A person placed an order in the user web app (through the gateway): the
        city places it like its own, for that user, at a merchant near them."""
        user = str(ev["from"])
        if not user.startswith("user:"):
            return
        if user not in self.users:
            self.users[user] = (self.rng.uniform(0, self.cfg.size_m),
                                self.rng.uniform(0, self.cfg.size_m))
        self._place_one(self.clock(), user=user, items=ev.get("items"),
                        notes=str(ev.get("notes", ""))[:200])

    def _place_one(self, now: float, user: str | None = None, items: list | None = None,
                   notes: str | None = None) -> None:
        self.placed += 1
        merchant = self.rng.choice(list(self.merchants))
        user = user or self.rng.choice(list(self.users))
        ready = now + self.rng.uniform(300, 900)
        order = OrderState(str(self.cfg.first_order + self.placed - 1), user, merchant,
                           self.merchants[merchant],
                           self.users[user], ready, ready + self.rng.uniform(900, 1500))
        if not isinstance(items, list) or not items:
            items = self.rng.sample(["noodles", "dumplings", "rice", "tea", "soup", "bao"], 2)
        if notes is None:
            notes = self.rng.choice(["", "no scallions", "extra chili"])
        self.service.place(order, [str(i)[:40] for i in items[:10]], notes=notes)

    # ---- parties react to what they receive ----------------------------------------------------

    def _deliveries(self) -> None:
        while (d := self.gateway.recv(timeout=0)) is not None:
            self.received[d.msg_class.name.lower()] += 1
            if d.seq:
                self.gateway.ack(d)
            if d.msg_class == MsgClass.LOCATION:
                continue
            if d.sender == self.service.sender.name:
                self.latency.received(d.sender, d.msg_id, self.back_at.get(d.address, -math.inf))
            try:
                self._react(d.address, d.kind, orjson.loads(d.payload))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                # not from this city (e.g. `router send` by hand): an app would skip it
                self.unreadable += 1

    def _react(self, party: str, kind: str, body: dict) -> None:
        now, rng = self.clock(), self.rng
        if kind == "order.created":
            late = rng.random() < self.cfg.late_confirm
            delay = rng.uniform(300, 600) if late else rng.uniform(20, 120)
            self._later(now + delay, "merchant.confirmed", {"order": body["order"]})
        elif kind == "dispatch.offer" and party in self.riders:
            r = self.riders[party]
            roll = rng.random()
            if roll < r.p_silent:
                return  # no answer: the offer times out and goes to the next rider
            answer = "rider.reject" if roll < r.p_silent + r.p_reject else "rider.accept"
            self._later(now + rng.uniform(5, 20), answer,
                        {"order": body["order"], "rider": party, "offer": body})
        elif kind == "dispatch.accepted" and party.startswith("rider:"):
            o = self._find(body["order"])
            if o is not None:
                r = self.riders[party]
                r.stops.append((*o.merchant_pos, "pickup", o.id, o.ready_at, 0.0))
                r.stops.append((*o.dropoff, "dropoff", o.id, 0.0, o.promised_at))
        elif kind == "order.accepted" and rng.random() < self.cfg.cancel:
            self._later(now + rng.uniform(30, 240), "user.cancel", {"order": body["order"]})
        elif kind == "order.accepted" and rng.random() < self.cfg.chat:
            # some chat long after: the order may be delivered by then
            self._later(now + rng.uniform(60, 3000), "user.chat",
                        {"order": body["order"], "from": party})
        elif kind in ("order.cancelled", "dispatch.offer_withdrawn") and party in self.riders:
            self._forget(self.riders[party], str(body["order"]))

    def _forget(self, r: SimRider, order_id: str) -> None:
        """The rider drops ``order_id``: its stops, and an answer it was about to give."""
        r.stops = [s for s in r.stops if s[3] != order_id]
        self.timers = [t for t in self.timers if not (
            t[1] in ("rider.accept", "rider.reject") and t[2].get("rider") == r.id
            and str(t[2]["order"]) == order_id)]

    def _on_app_receipt(self, r: Receipt) -> None:
        if r.status in (Status.REFUSED, Status.EXPIRED, Status.FAILED):
            self.app_refusals[f"{r.status.name.lower()} {r.code.name}"] += 1

    def _find(self, order_id: str) -> OrderState | None:
        return self.service.orders.get(str(order_id))

    def _later(self, at: float, kind: str, data: dict) -> None:
        self.timers.append((at, kind, data))

    def _fire_timers(self, now: float) -> None:
        due = [t for t in self.timers if t[0] <= now]
        if not due:
            return
        self.timers = [t for t in self.timers if t[0] > now]
        for _, kind, data in sorted(due, key=lambda t: t[0]):
            if kind == "user.chat":
                self.apps.send(f"order:{data['order']}", {"from": data["from"],
                                                          "text": "where is my food?"},
                               kind="chat", msg_class=MsgClass.CHAT, channel=True,
                               key=f"order:{data['order']}")
                continue
            event = {"type": kind, "order": data["order"]}
            if "rider" in data:
                event["rider"] = data["rider"]
            self.apps.send(INBOX, event, kind=kind, msg_class=MsgClass.ORDER,
                           key=f"order:{data['order']}")

    # ---- riders ride ---------------------------------------------------------------------------

    def _move_riders(self, now: float, dt: float) -> None:
        step = SPEED_MPS / ROUTE_FACTOR * dt
        for r in self.riders.values():
            if r.stops:
                self._advance(r, now, step)
            if now - r.last_report >= self.cfg.report_every_s:
                r.last_report = now
                self._report(r, now)

    def _advance(self, r: SimRider, now: float, step: float) -> None:
        x, y, kind, order, ready, _ = r.stops[0]
        dist = math.hypot(x - r.x, y - r.y)
        if dist > step:
            r.x += (x - r.x) * step / dist
            r.y += (y - r.y) * step / dist
            return
        r.x, r.y = x, y
        if kind == "pickup" and now < ready:
            return  # waiting for the food
        r.stops.pop(0)
        event = "rider.picked_up" if kind == "pickup" else "rider.delivered"
        self.apps.send(INBOX, {"type": event, "order": order, "rider": r.id}, kind=event,
                       key=f"order:{order}")

    def _report(self, r: SimRider, now: float) -> None:
        """The rider's state to dispatch, and its position to its customers."""
        state = {"id": r.id, "x": r.x, "y": r.y, "load": r.load, "capacity": 2,
                 "online": r.id not in self.offline,
                 "route": [[s[0], s[1], s[5] or math.inf, s[4] or -math.inf] for s in r.stops]}
        self.apps.send(RIDER_CHANNEL, _dumps(state), msg_class=MsgClass.LOCATION, key=r.id,
                       channel=True, kind="rider.state")
        for o in {s[3] for s in r.stops}:
            order = self.service.orders.get(o)
            if order is not None:
                self.apps.send(order.user, {"rider": r.id, "x": round(r.x), "y": round(r.y)},
                               msg_class=MsgClass.LOCATION, key=r.id, kind="rider.location")

    # ---- weak networks -------------------------------------------------------------------------

    def _weak_network(self, now: float, dt: float) -> None:
        for party, until in list(self.offline.items()):
            if now >= until:
                del self.offline[party]
                self.back_at[party] = time.monotonic()
                self.gateway.bind([party])  # back: the router replays what it missed
        p = self.cfg.weak_network * dt / 60
        if p <= 0:
            return
        for party in list(self.merchants) + list(self.riders):
            if party not in self.offline and self.rng.random() < p:
                self.offline[party] = now + self.rng.uniform(30, 300)
                self.gateway.unbind([party])


def _dumps(state: dict) -> bytes:
    """JSON with infinities spelled as large numbers (JSON has no Infinity)."""
    state["route"] = [[a, b, min(c, 1e12), max(d, -1e12)] for a, b, c, d in state["route"]]
    return orjson.dumps(state)
