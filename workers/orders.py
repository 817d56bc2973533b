"""The order service: drives each order through its life as messages via the router.

placed -> merchant notified (order.created) -> merchant confirmed (order.accepted to the
user) -> dispatch request -> rider offered (dispatch.offer, with a TTL) -> rider accepted
(dispatch.accepted to the order's channel) -> picked up -> delivered; the channel
``order:<id>`` holds the user, the merchant and, once assigned, the rider.

Parties answer by sending events to the address ``svc:orders``::

    {"type": "merchant.confirmed" | "rider.accept" | "rider.reject" | "rider.picked_up"
             | "rider.delivered" | "user.cancel" | "merchant.cancel",
     "order": id, "rider": id?, "reason": text?}

Until pickup the user or the merchant can cancel: the order's channel gets
order.cancelled (who, why), an outstanding offer is withdrawn from its rider
(dispatch.offer_withdrawn) and no further offer is made; a rider who accepts after that
is told order.cancelled. After pickup a cancel is answered order.cancel_refused.

An offer nobody accepts within its TTL (or that is rejected) goes to the next candidate
at the next step (steps run every few tens of ms, well inside the 1 s promise); after
``max_offers`` refusals the order is escalated. Every message carries ``order:<id>`` as
its key, so the router's order history holds the whole life of each order.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import orjson
from prometheus_client import Counter

from router.client import Endpoint, Sender
from router.protocol import ErrorCode, MsgClass
from router.session import Reply

log = logging.getLogger("workers.orders")

INBOX = "svc:orders"
OFFERS_METRIC = Counter("router_dispatch_offers", "dispatch offers, by outcome", ["outcome"])
ORDERS = Counter("router_orders", "order state transitions", ["state"])


@dataclass
class OrderState:
    """One order as the service tracks it."""

    id: str
    user: str
    merchant: str
    merchant_pos: tuple[float, float]
    dropoff: tuple[float, float]
    ready_at: float
    promised_at: float
    state: str = "placed"
    rider: str | None = None
    tried: list[str] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)
    offer_to: str | None = None
    offer_deadline: float = 0.0
    refusals: int = 0
    request_id: int | None = None
    escalated: bool = False
    cancelled_by: str | None = None
    times: dict[str, float] = field(default_factory=dict)

    @property
    def channel(self) -> str:
        """The order's channel: its user, merchant and rider."""
        return f"order:{self.id}"


class OrderService:
    """Order lifecycle over the router. ``clock`` gives the simulated time in seconds
    (offers and promises use it); real-time TTLs are ``offer_ttl_ms``."""

    def __init__(self, url: str, *, offer_ttl_ms: int = 15000, max_offers: int = 5,
                 clock: Callable[[], float] = time.time, name: str = "orders") -> None:
        self.sender = Sender(url, name)
        self.inbox = Endpoint(url, [INBOX], name=f"{name}-inbox")
        self.offer_ttl_ms, self.max_offers, self.clock = offer_ttl_ms, max_offers, clock
        self.orders: dict[str, OrderState] = {}
        self.pending_requests: dict[int, str] = {}
        self.events: list[tuple[str, str]] = []  # (order id, event) for the live display
        self.offer_delays: list[float] = []  # seconds from an offer's TTL to the next offer
        self.offers: collections.Counter[str] = collections.Counter()  # outcome -> count

    # ---- commands ---------------------------------------------------------------------------

    def place(self, order: OrderState, items: list[str], notes: str = "") -> None:
        """A user placed an order: tell the merchant, open the order's channel."""
        self.orders[order.id] = order
        order.times["placed"] = self.clock()
        self.sender.join(order.channel, [order.user, order.merchant])
        self._send(order, order.merchant, "order.created",
                   {"order": order.id, "items": items, "notes": notes,
                    "ready_at": order.ready_at, "user": order.user})
        ORDERS.labels("placed").inc()

    def step(self, timeout: float = 0.0) -> None:
        """Handle party events, dispatch replies and offer timeouts."""
        d = self.inbox.recv(timeout=timeout)
        while d is not None:
            self._on_event(orjson.loads(d.payload))
            self.inbox.ack(d)
            d = self.inbox.recv(timeout=0)
        self.inbox.flush()
        self.sender.poll(0)
        for rid in list(self.pending_requests):
            reply = self.sender.take_reply(rid)
            if reply is not None:
                self._on_candidates(self.pending_requests.pop(rid), reply)
        now = time.monotonic()
        for o in self.orders.values():
            if o.offer_to and now >= o.offer_deadline:
                self._offer("timed_out")
                self._next_offer(o, refused=True, deadline=o.offer_deadline)

    def close(self) -> None:
        """Close both connections."""
        self.sender.close()
        self.inbox.close()

    # ---- the lifecycle -----------------------------------------------------------------------

    def _on_event(self, ev: dict) -> None:
        o = self.orders.get(str(ev.get("order")))
        if o is None:
            return
        kind = ev.get("type")
        if o.state == "cancelled":
            if kind == "rider.accept" and ev.get("rider"):
                # accepted an offer withdrawn meanwhile: make sure that rider knows
                self._send(o, str(ev["rider"]), "order.cancelled",
                           {"order": o.id, "by": o.cancelled_by}, cls=MsgClass.DISPATCH)
            return
        if kind in ("user.cancel", "merchant.cancel"):
            self._cancel(o, kind.split(".")[0], str(ev.get("reason", "")))
        elif kind == "merchant.confirmed" and o.state == "placed":
            self._transition(o, "confirmed")
            self._send(o, o.user, "order.accepted", {"order": o.id, "ready_at": o.ready_at})
            self._request_dispatch(o)
        elif kind == "rider.accept" and ev.get("rider") == o.offer_to:
            o.rider, o.offer_to = o.offer_to, None
            self._offer("accepted")
            self._transition(o, "assigned")
            self.sender.join(o.channel, [o.rider])
            self._send(o, o.channel, "dispatch.accepted", {"order": o.id, "rider": o.rider},
                       channel=True)
        elif kind == "rider.reject" and ev.get("rider") == o.offer_to:
            self._offer("rejected")
            self._next_offer(o, refused=True)
        elif kind == "rider.picked_up" and o.state == "assigned":
            self._transition(o, "picked_up")
            self._send(o, o.channel, "order.picked_up", {"order": o.id}, channel=True)
        elif kind == "rider.delivered" and o.state == "picked_up":
            self._transition(o, "delivered")
            self._send(o, o.channel, "order.delivered", {"order": o.id}, channel=True)
            # Close the channel on the same connection: the router handles the SEND first.
            self.sender.leave(o.channel)

    def _cancel(self, o: OrderState, by: str, reason: str) -> None:
        """Cancel ``o`` for its user or merchant (``by``), unless the food is picked up."""
        if o.state in ("picked_up", "delivered"):
            self._send(o, o.user if by == "user" else o.merchant, "order.cancel_refused",
                       {"order": o.id, "state": o.state})
            return
        if o.offer_to:
            self._send(o, o.offer_to, "dispatch.offer_withdrawn", {"order": o.id},
                       cls=MsgClass.DISPATCH)
            o.offer_to = None
        o.candidates = []
        o.cancelled_by = by
        self._transition(o, "cancelled")
        self._send(o, o.channel, "order.cancelled", {"order": o.id, "by": by, "reason": reason},
                   channel=True)
        self.sender.leave(o.channel)  # after the SEND, on the same connection

    def _transition(self, o: OrderState, state: str) -> None:
        o.state = state
        o.times[state] = self.clock()
        ORDERS.labels(state).inc()
        self.events.append((o.id, state))

    def _request_dispatch(self, o: OrderState) -> None:
        body = {"order": {"id": o.id, "merchant": o.merchant_pos, "dropoff": o.dropoff,
                          "ready_at": o.ready_at, "promised_at": o.promised_at},
                "now": self.clock(), "exclude": o.tried, "limit": 5}
        rid = self.sender.submit("dispatch", body, ttl_ms=5000)
        self.pending_requests[rid] = o.id

    def _on_candidates(self, order_id: str, reply: Reply) -> None:
        o = self.orders[order_id]
        if o.state == "cancelled":
            return  # cancelled while dispatch was thinking
        if reply.code != ErrorCode.NONE:
            log.warning("dispatch for order %s failed: %s", o.id, reply.code.name)
            self._request_dispatch(o)
            return
        o.candidates = [c["rider"] for c in orjson.loads(reply.payload)["candidates"]]
        self._next_offer(o, refused=False)

    def _next_offer(self, o: OrderState, refused: bool, deadline: float | None = None) -> None:
        if refused:
            o.refusals += 1
            o.offer_to = None
            if deadline is not None:
                self.offer_delays.append(time.monotonic() - deadline)
            if o.refusals >= self.max_offers and not o.escalated:
                o.escalated = True
                self._offer("escalated")
                self.events.append((o.id, "escalated"))
                log.warning("order %s escalated after %d refusals", o.id, o.refusals)
        while o.candidates and o.candidates[0] in o.tried:
            o.candidates.pop(0)
        if not o.candidates:
            self._request_dispatch(o)  # ask again, without the riders already tried
            return
        rider = o.candidates.pop(0)
        o.tried.append(rider)
        o.offer_to = rider
        o.offer_deadline = time.monotonic() + self.offer_ttl_ms / 1000
        if refused:
            self._offer("reassigned")
        self._offer("sent")
        self._send(o, rider, "dispatch.offer",
                   {"order": o.id, "pickup": o.merchant_pos, "dropoff": o.dropoff,
                    "ready_at": o.ready_at, "promised_at": o.promised_at,
                    "merchant": o.merchant}, cls=MsgClass.DISPATCH, ttl_ms=self.offer_ttl_ms)

    def _offer(self, outcome: str) -> None:
        self.offers[outcome] += 1
        OFFERS_METRIC.labels(outcome).inc()

    def _send(self, o: OrderState, target: str, kind: str, body: dict, *,
              channel: bool = False, cls: MsgClass = MsgClass.ORDER, ttl_ms: int = 0) -> int:
        return self.sender.send(target, body, kind=kind, msg_class=cls, key=o.channel,
                                channel=channel, ttl_ms=ttl_ms)
