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
``max_offers`` refusals the order is escalated. When dispatch has no candidate left (an
empty or failed reply) the service asks again after a backoff that doubles from
``retry_base_s`` up to ``retry_cap_s`` (real seconds, like the offer TTL), and all such
retries share a budget of ``retry_rate`` per second, so a city without a free rider
costs a bounded request rate per order and in all, however many orders wait.

Messages arrive late, twice or for orders this service no longer holds (a dispatch reply
after the order was cancelled, an accept after the offer moved on, a second
``rider.delivered``): each such message is counted by reason in :attr:`OrderService.ignored`
(and the metric ``router_orders_ignored_messages_total``) and otherwise ignored, except
that a rider accepting a finished order is told so. Finished orders are remembered
(bounded) for that. Every message carries ``order:<id>`` as its key, so the router's
order history holds the whole life of each order.
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
from router.protocol import ErrorCode, MsgClass, Receipt, Status
from router.session import Reply

log = logging.getLogger("workers.orders")

INBOX = "svc:orders"
OFFERS_METRIC = Counter("router_dispatch_offers", "dispatch offers, by outcome", ["outcome"])
ORDERS = Counter("router_orders", "order state transitions", ["state"])

#: Why a message was ignored: the label values of IGNORED_METRIC, and the keys of
#: OrderService.ignored.
IGNORED_REASONS = {
    "late_reply": "dispatch reply for an order already finished, or after the request was "
                  "given up",
    "unknown_reply": "dispatch reply for a request id this service never had pending",
    "reply_timeout": "dispatch request unanswered past its TTL: given up, asked again",
    "unknown_order": "event for an order this service never had (or has forgotten)",
    "after_cancel": "event for a cancelled order (a late accept is told order.cancelled)",
    "after_delivery": "event for a delivered order (a repeated delivery, a late accept)",
    "stale_offer": "accept/reject of an offer that timed out, was withdrawn or moved on",
    "duplicate": "a step repeated (second confirm, accept or pickup of the same order)",
    "out_of_order": "a step before its time, or from a rider who does not hold the order",
    "malformed": "not an event this service understands",
}
IGNORED_METRIC = Counter("router_orders_ignored_messages",
                         "late, repeated or unknown messages the order service ignored, by reason",
                         ["reason"])
DISPATCH_REQUESTS = Counter("router_orders_dispatch_requests",
                            "dispatch requests of the order service: first for an order, more "
                            "after its candidates ran out, retry after an empty/failed reply",
                            ["reason"])
for _reason in IGNORED_REASONS:
    IGNORED_METRIC.labels(_reason)
for _reason in ("first", "more", "retry"):
    DISPATCH_REQUESTS.labels(_reason)
# every label from the start: a panel on a rare outcome (escalated) is 0, not empty
for _outcome in ("sent", "accepted", "rejected", "timed_out", "reassigned", "escalated"):
    OFFERS_METRIC.labels(_outcome)
for _state in ("placed", "confirmed", "assigned", "picked_up", "delivered", "cancelled"):
    ORDERS.labels(_state)

EVENT_KINDS = frozenset({"merchant.confirmed", "rider.accept", "rider.reject", "rider.picked_up",
                         "rider.delivered", "user.cancel", "merchant.cancel", "user.place"})
FINISHED = ("delivered", "cancelled")


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
    request_deadline: float = 0.0   # monotonic: give the pending request up after this
    retry_at: float | None = None   # monotonic: ask dispatch again at this time
    empty_replies: int = 0          # empty/failed replies in a row (the backoff exponent)
    escalated: bool = False
    cancelled_by: str | None = None
    times: dict[str, float] = field(default_factory=dict)

    @property
    def channel(self) -> str:
        """The order's channel: its user, merchant and rider."""
        return f"order:{self.id}"


@dataclass(frozen=True)
class Finished:
    """What is remembered of a delivered or cancelled order, to answer late messages."""

    state: str
    cancelled_by: str | None
    rider: str | None
    user: str
    merchant: str


class OrderService:
    """Order lifecycle over the router. ``clock`` gives the simulated time in seconds
    (offers and promises use it); real-time TTLs are ``offer_ttl_ms``, and the dispatch
    backoff ``retry_base_s``..``retry_cap_s`` is in real seconds too; all retries together
    are held to ``retry_rate`` per second (oldest orders first).

    ``on_sent(msg_id)`` is called for every message sent to a party (the city times them).
    Delivered and cancelled orders leave :attr:`orders`; :meth:`take_finished` hands them
    over, and the last ``keep_finished`` are remembered to answer late messages.
    """

    def __init__(self, url: str, *, offer_ttl_ms: int = 15000, max_offers: int = 5,
                 clock: Callable[[], float] = time.time, name: str = "orders",
                 retry_base_s: float = 1.0, retry_cap_s: float = 16.0, retry_rate: float = 20.0,
                 request_ttl_ms: int = 5000, keep_finished: int = 50_000,
                 on_sent: Callable[[int], None] | None = None,
                 client_options: dict | None = None) -> None:
        self._replies: list[Reply] = []
        client_options = client_options or {}  # CURVE keys for an authenticated router
        # every REPLY goes to _replies as it arrives, so one nobody waits for is seen
        self.sender = Sender(url, name, on_reply=self._replies.append,
                             on_receipt=self._on_receipt, **client_options)
        self.inbox = Endpoint(url, [INBOX], name=f"{name}-inbox", **client_options)
        self.offer_ttl_ms, self.max_offers, self.clock = offer_ttl_ms, max_offers, clock
        self.retry_base_s, self.retry_cap_s = retry_base_s, retry_cap_s
        self.retry_rate, self._tokens, self._tokens_at = retry_rate, retry_rate, time.monotonic()
        self.request_ttl_ms, self.keep_finished = request_ttl_ms, keep_finished
        self.on_sent = on_sent
        #: ``user.place`` events (a user's app asking for an order, through the gateway)
        #: go here: whoever owns the catalogue (the simulated city) places the order
        self.on_place: Callable[[dict], None] | None = None
        self.orders: dict[str, OrderState] = {}
        self.finished: collections.OrderedDict[str, Finished] = collections.OrderedDict()
        self._just_finished: list[OrderState] = []
        self.pending_requests: dict[int, str] = {}
        #: requests of finished orders or given up: their replies count as late, not unknown
        self._dropped_requests: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.events: list[tuple[str, str]] = []  # (order id, event) for the live display
        self.offer_delays: list[float] = []  # seconds from an offer's TTL to the next offer
        self.offers: collections.Counter[str] = collections.Counter()  # outcome -> count
        self.ignored: collections.Counter[str] = collections.Counter()  # reason -> count
        #: dispatch requests by reason (first, more, retry) and replies (candidates, empty,
        #: failed)
        self.dispatch: collections.Counter[str] = collections.Counter()
        #: final receipts of this service's messages that did not reach their party
        self.undelivered: collections.Counter[str] = collections.Counter()

    # ---- commands ---------------------------------------------------------------------------

    def place(self, order: OrderState, items: list[str], notes: str = "") -> None:
        """A user placed an order: tell the merchant, open the order's channel."""
        self.orders[order.id] = order
        order.times["placed"] = self.clock()
        self.sender.join(order.channel, [order.user, order.merchant])
        self._send(order.id, order.merchant, "order.created",
                   {"order": order.id, "items": items, "notes": notes,
                    "ready_at": order.ready_at, "user": order.user})
        ORDERS.labels("placed").inc()

    def step(self, timeout: float = 0.0) -> None:
        """Handle party events, dispatch replies, offer timeouts and dispatch retries."""
        d = self.inbox.recv(timeout=timeout)
        while d is not None:
            self._on_event(d.payload)
            self.inbox.ack(d)
            d = self.inbox.recv(timeout=0)
        self.sender.poll(0)
        replies = self._replies[:]
        self._replies.clear()  # the same list: the sender appends to it
        for reply in replies:
            self._on_reply(reply)
        now = time.monotonic()
        for o in list(self.orders.values()):
            if o.offer_to and now >= o.offer_deadline:
                self._offer("timed_out")
                self._next_offer(o, refused=True, deadline=o.offer_deadline)
            elif o.request_id is not None and now >= o.request_deadline:
                self._give_up_request(o)
            elif o.retry_at is not None and now >= o.retry_at and self._retry_token(now):
                o.retry_at = None  # oldest orders first: dict order is placing order
                self._request_dispatch(o, "retry")

    def find(self, order_id: str) -> OrderState | Finished | None:
        """The open order, or what is remembered of a finished one, or None."""
        return self.orders.get(str(order_id)) or self.finished.get(str(order_id))

    def take_finished(self) -> list[OrderState]:
        """Orders delivered or cancelled since the last call (they are no longer open)."""
        done, self._just_finished = self._just_finished, []
        return done

    def close(self) -> None:
        """Close both connections."""
        self.sender.close()
        self.inbox.close()

    # ---- party events -----------------------------------------------------------------------

    def _on_event(self, payload: bytes) -> None:
        try:
            ev = orjson.loads(payload)
        except orjson.JSONDecodeError:
            ev = None
        if not _readable_event(ev):
            self._ignore("malformed")
            return
        kind, oid = ev["type"], str(ev["order"])
        if kind == "user.place":
            if self.on_place is None or not _is_name(ev.get("from")):
                self._ignore("no_placer")
            else:
                self.on_place(ev)
            return
        o = self.orders.get(oid)
        if o is None:
            self._on_gone_order_event(oid, kind, ev)
        elif kind in ("user.cancel", "merchant.cancel"):
            self._cancel(o, kind.split(".")[0], str(ev.get("reason", "")))
        elif kind == "merchant.confirmed":
            self._on_confirmed(o)
        elif kind == "rider.accept":
            self._on_accept(o, ev.get("rider"))
        elif kind == "rider.reject":
            self._on_reject(o, ev.get("rider"))
        elif kind == "rider.picked_up":
            self._on_picked_up(o, ev.get("rider"))
        else:
            self._on_delivered(o, ev.get("rider"))

    def _on_gone_order_event(self, oid: str, kind: str, ev: dict) -> None:
        """An event for an order that is finished or was never here."""
        gone = self.finished.get(oid)
        if gone is None:
            self._ignore("unknown_order")
            return
        self._ignore("after_cancel" if gone.state == "cancelled" else "after_delivery")
        rider = ev.get("rider")
        if kind == "rider.accept" and rider != gone.rider:
            # accepted an offer withdrawn meanwhile: make sure that rider does not ride
            if gone.state == "cancelled":
                self._send(oid, str(rider), "order.cancelled",
                           {"order": oid, "by": gone.cancelled_by}, cls=MsgClass.DISPATCH)
            else:
                self._send(oid, str(rider), "dispatch.offer_withdrawn", {"order": oid},
                           cls=MsgClass.DISPATCH)
        elif kind in ("user.cancel", "merchant.cancel") and gone.state == "delivered":
            party = gone.user if kind == "user.cancel" else gone.merchant
            self._send(oid, party, "order.cancel_refused", {"order": oid, "state": gone.state})

    def _on_confirmed(self, o: OrderState) -> None:
        if o.state != "placed":
            self._ignore("duplicate")
            return
        self._transition(o, "confirmed")
        self._send(o.id, o.user, "order.accepted", {"order": o.id, "ready_at": o.ready_at})
        self._request_dispatch(o, "first")

    def _on_accept(self, o: OrderState, rider: str | None) -> None:
        if rider == o.rider:
            self._ignore("duplicate")
            return
        if rider != o.offer_to:
            self._ignore("stale_offer")
            # its offer timed out or went to another rider: it must not ride
            self._send(o.id, str(rider), "dispatch.offer_withdrawn", {"order": o.id},
                       cls=MsgClass.DISPATCH)
            return
        o.rider, o.offer_to = o.offer_to, None
        self._offer("accepted")
        self._transition(o, "assigned")
        self.sender.join(o.channel, [o.rider])
        self._send(o.id, o.channel, "dispatch.accepted", {"order": o.id, "rider": o.rider},
                   channel=True)

    def _on_reject(self, o: OrderState, rider: str | None) -> None:
        if rider != o.offer_to:
            self._ignore("stale_offer")
            return
        self._offer("rejected")
        self._next_offer(o, refused=True)

    def _on_picked_up(self, o: OrderState, rider: str | None) -> None:
        if o.state == "picked_up" and (not rider or rider == o.rider):
            self._ignore("duplicate")
        elif o.state != "assigned" or (rider and rider != o.rider):
            self._ignore("out_of_order")
        else:
            self._transition(o, "picked_up")
            self._send(o.id, o.channel, "order.picked_up", {"order": o.id}, channel=True)

    def _on_delivered(self, o: OrderState, rider: str | None) -> None:
        if o.state != "picked_up" or (rider and rider != o.rider):
            self._ignore("out_of_order")
            return
        self._transition(o, "delivered")
        self._send(o.id, o.channel, "order.delivered", {"order": o.id}, channel=True)
        # Close the channel on the same connection: the router handles the SEND first.
        self.sender.leave(o.channel)
        self._finish(o)

    def _cancel(self, o: OrderState, by: str, reason: str) -> None:
        """Cancel ``o`` for its user or merchant (``by``), unless the food is picked up."""
        if o.state == "picked_up":
            self._send(o.id, o.user if by == "user" else o.merchant, "order.cancel_refused",
                       {"order": o.id, "state": o.state})
            return
        if o.offer_to:
            self._send(o.id, o.offer_to, "dispatch.offer_withdrawn", {"order": o.id},
                       cls=MsgClass.DISPATCH)
            o.offer_to = None
        o.candidates, o.retry_at = [], None
        o.cancelled_by = by
        self._transition(o, "cancelled")
        self._send(o.id, o.channel, "order.cancelled", {"order": o.id, "by": by, "reason": reason},
                   channel=True)
        self.sender.leave(o.channel)  # after the SEND, on the same connection
        self._finish(o)

    def _transition(self, o: OrderState, state: str) -> None:
        o.state = state
        o.times[state] = self.clock()
        ORDERS.labels(state).inc()
        self.events.append((o.id, state))

    def _finish(self, o: OrderState) -> None:
        """``o`` is delivered or cancelled: it leaves the open orders, a trace stays."""
        del self.orders[o.id]
        self._drop_request(o)
        self.finished[o.id] = Finished(o.state, o.cancelled_by, o.rider, o.user, o.merchant)
        while len(self.finished) > self.keep_finished:
            self.finished.popitem(last=False)
        self._just_finished.append(o)

    # ---- dispatch ---------------------------------------------------------------------------

    def _request_dispatch(self, o: OrderState, reason: str) -> None:
        body = {"order": {"id": o.id, "merchant": o.merchant_pos, "dropoff": o.dropoff,
                          "ready_at": o.ready_at, "promised_at": o.promised_at},
                "now": self.clock(), "exclude": o.tried, "limit": 5}
        rid = self.sender.submit("dispatch", body, ttl_ms=self.request_ttl_ms)
        self.pending_requests[rid] = o.id
        # the broker answers by the TTL; the grace covers a router that died meanwhile
        o.request_id, o.request_deadline = rid, time.monotonic() + self.request_ttl_ms / 1000 + 5
        self.dispatch[reason] += 1
        DISPATCH_REQUESTS.labels(reason).inc()

    def _on_reply(self, reply: Reply) -> None:
        order_id = self.pending_requests.pop(reply.request_id, None)
        o = self.orders.get(order_id) if order_id is not None else None
        if o is None:
            late = order_id is not None or reply.request_id in self._dropped_requests
            self._ignore("late_reply" if late else "unknown_reply")
            return
        o.request_id = None
        candidates = _candidates(reply)
        if candidates is None:
            self.dispatch["failed"] += 1
            log.warning("dispatch for order %s failed: %s", o.id, reply.code.name)
            self._retry_later(o)
            return
        o.candidates = candidates
        self.dispatch["candidates" if candidates else "empty"] += 1
        self._next_offer(o, refused=False)

    def _drop_request(self, o: OrderState) -> None:
        """Stop waiting for ``o``'s request; its reply, if it comes, is counted late."""
        if o.request_id is None:
            return
        self.pending_requests.pop(o.request_id, None)
        self._dropped_requests[o.request_id] = None
        while len(self._dropped_requests) > self.keep_finished:
            self._dropped_requests.popitem(last=False)
        o.request_id = None

    def _give_up_request(self, o: OrderState) -> None:
        """No reply within TTL + grace (router gone?): forget the request, ask later."""
        self._drop_request(o)
        self._ignore("reply_timeout")
        self._retry_later(o)

    def _retry_token(self, now: float) -> bool:
        """Take one retry from the budget of ``retry_rate`` per second (burst of one
        second's worth): a backlog of orders nobody can take must not flood dispatch."""
        self._tokens = min(self._tokens + (now - self._tokens_at) * self.retry_rate,
                           self.retry_rate)
        self._tokens_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _retry_later(self, o: OrderState) -> None:
        """Ask dispatch again after a backoff doubling per empty/failed reply, capped."""
        delay = min(self.retry_base_s * 2 ** o.empty_replies, self.retry_cap_s)
        o.empty_replies += 1
        o.retry_at = time.monotonic() + delay

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
            if refused:  # the candidates ran out: ask for more, without those tried
                self._request_dispatch(o, "more")
            else:  # dispatch had nobody for this order: ask again later
                self._retry_later(o)
            return
        o.empty_replies = 0
        rider = o.candidates.pop(0)
        o.tried.append(rider)
        o.offer_to = rider
        o.offer_deadline = time.monotonic() + self.offer_ttl_ms / 1000
        if refused:
            self._offer("reassigned")
        self._offer("sent")
        self._send(o.id, rider, "dispatch.offer",
                   {"order": o.id, "pickup": o.merchant_pos, "dropoff": o.dropoff,
                    "ready_at": o.ready_at, "promised_at": o.promised_at,
                    "merchant": o.merchant, "user": o.user}, cls=MsgClass.DISPATCH,
                   ttl_ms=self.offer_ttl_ms)

    # ---- bookkeeping ------------------------------------------------------------------------

    def _offer(self, outcome: str) -> None:
        self.offers[outcome] += 1
        OFFERS_METRIC.labels(outcome).inc()

    def _ignore(self, reason: str) -> None:
        self.ignored[reason] += 1
        IGNORED_METRIC.labels(reason).inc()

    def _on_receipt(self, r: Receipt) -> None:
        if r.status in (Status.REFUSED, Status.EXPIRED, Status.FAILED):
            self.undelivered[f"{r.status.name.lower()} {r.code.name}"] += 1

    def _send(self, order_id: str, target: str, kind: str, body: dict, *,
              channel: bool = False, cls: MsgClass = MsgClass.ORDER, ttl_ms: int = 0) -> int:
        mid = self.sender.send(target, body, kind=kind, msg_class=cls, key=f"order:{order_id}",
                               channel=channel, ttl_ms=ttl_ms)
        if self.on_sent is not None:
            self.on_sent(mid)
        return mid


def _is_name(value: object) -> bool:
    """Whether ``value`` can be an address: 1..255 printable ASCII characters, no spaces."""
    return (isinstance(value, str) and 0 < len(value) <= 255
            and all("!" <= c <= "~" for c in value))


def _readable_event(ev: object) -> bool:
    """Whether ``ev`` is an event this service understands: a known type, an order id
    and, where a rider is named (always for accept and reject), a valid address."""
    if not isinstance(ev, dict) or not isinstance(ev.get("type"), str):
        return False
    kind, rider = ev["type"], ev.get("rider")
    if kind not in EVENT_KINDS or "order" not in ev or not _is_name(f"order:{ev['order']}"):
        return False
    if kind in ("rider.accept", "rider.reject"):
        return _is_name(rider)
    return rider is None or _is_name(rider)


def _candidates(reply: Reply) -> list[str] | None:
    """The rider ids of a dispatch reply, best first; None if it failed or is unreadable."""
    if reply.code != ErrorCode.NONE:
        return None
    try:
        return [str(c["rider"]) for c in orjson.loads(reply.payload)["candidates"]]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        log.warning("unreadable dispatch reply %r", reply.payload[:200])
        return None
