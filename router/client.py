"""Blocking SDK: :class:`Sender` for backend services, :class:`Endpoint` for parties.

Example (against `router serve` on its default endpoint)::

    from router.client import Sender, Endpoint
    from router.protocol import MsgClass, Status

    with Endpoint("tcp://127.0.0.1:5555", ["merchant:881"]) as merchant, \\
         Sender("tcp://127.0.0.1:5555", "orders-svc") as orders:
        mid = orders.send("merchant:881", {"order": 1, "items": ["noodles"]}, kind="order.created")
        d = merchant.recv(timeout=1.0)
        merchant.ack(d)
        assert orders.wait(mid, Status.DELIVERED, timeout=1.0).status == Status.DELIVERED

Each client is one connection driven by a native I/O thread (:mod:`router.engine`): it
says HELLO, heartbeats, reconnects, acks and resends on its own, so a caller that is
busy elsewhere (a slow handler, a long ``wait``) never makes the connection go silent.
Callbacks (``on_receipt``, ``on_error``, ``on_event``, per-message ``callback``) run in
the application's thread, inside :meth:`Client.poll`, :meth:`Client.wait`,
:meth:`Client.flush` and :meth:`Endpoint.recv`, as in confluent-kafka.

The asyncio twins, on the same engine, are in :mod:`router.aio`.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
import time
from typing import Any, Callable, Iterable, Iterator, NoReturn

import orjson
import zmq

from .auth.keys import client_options
from .config import check_endpoint, split_endpoints
from .engine import SEND_BAD_TARGET, SEND_DONE, SEND_NO_ROOM, Engine
from .incoming import Addresses
from .outgoing import NO_LIMIT, Batch, send_key
from .protocol import (
    Delivery, ErrorCode, MsgClass, Receipt, Role, Status, decode_error, decode_reply,
    decode_request, decode_welcome, encode_join, encode_request,
)
from .session import (
    COMPRESS_ABOVE, Payload, Reply, Request, RouterError, RouterUnavailable,
    Welcome, check_address, check_channel, encode_payload, payload_json,
)

__all__ = ["Sender", "Endpoint", "Client", "RouterError", "RouterUnavailable",
           "PendingLimitError", "Addresses", "payload_json"]

log = logging.getLogger("router.client")

#: Final receipt statuses: nothing more will come for that message id.
FINAL = frozenset({Status.DELIVERED, Status.EXPIRED, Status.REFUSED, Status.FAILED})
_STATUS = {int(s): s for s in Status}
_CODE = {int(c): c for c in ErrorCode}

#: libzmq monitor events the engine follows: the link is up after the ZMTP handshake.
LINK_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
               | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
#: Connection events handed to ``on_event``.
LINK_NAMES = {0: "disconnected", 1: "connected", 2: "reconnected", 3: "refused"}
#: What a client is told when the router's ZAP handler refuses its credentials.
REFUSED_TEXT = ("the router refused this client's credentials in the handshake: its key "
                "(or name and password) is not in the router's credentials file, or was "
                "revoked")


class PendingLimitError(RuntimeError):
    """``max_pending`` reliable messages are already waiting for the router's ACCEPTED
    and no room came within the send's timeout: the router is unreachable or slow.
    Retry later, raise ``max_pending``, or wait with :meth:`Client.flush`."""


def make_socket(context: zmq.Context, endpoint: str, reconnect_ivl: float = 0.1,
                reconnect_ivl_max: float = 0.0,
                security: dict[int, bytes] | None = None) -> zmq.Socket:
    """A DEALER for one session: unbounded queues (the router applies the bounds),
    reconnect every ``reconnect_ivl`` s plus libzmq's random jitter of up to the same
    again (doubling up to ``reconnect_ivl_max`` when that is larger), ZMTP heartbeats to
    notice a dead link. No fixed routing id: the router assigns one per connection, and
    a reconnect moves the session's addresses by HELLO (docs/PROTOCOL.md §1).
    ``security``: CURVE or PLAIN options (router.auth.keys.client_options).
    Raises ValueError for an endpoint that is not tcp://host:port or ipc://path."""
    check_endpoint(endpoint)
    if reconnect_ivl <= 0:
        raise ValueError(f"reconnect_ivl must be > 0 seconds, got {reconnect_ivl}")
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, max(int(reconnect_ivl * 1000), 1))
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, max(int(reconnect_ivl_max * 1000), 0))
    # Safe here because RCVHWM is 0: libzmq 4.3.5 aborts when the heartbeat timer
    # fires on a connection whose input stopped at its RCVHWM (see router/server.py).
    sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
    for option, value in (security or {}).items():
        sock.setsockopt(option, value)
    sock.connect(endpoint)
    return sock


def json_reply(reply: Reply) -> Any:
    """The JSON body of a built-in service's reply; RouterError if it was refused."""
    if reply.code != ErrorCode.NONE:
        raise RouterError(reply.code, 0, reply.payload.decode(errors="replace"))
    return orjson.loads(reply.payload)


class Client:
    """One connection to the router, for any role: sending, requests and receipts.

    :class:`Sender`, :class:`Endpoint` and the service workers build on it. Connecting
    waits for the router's WELCOME when ``wait`` is true (the default): an ERROR instead
    (the router refused the HELLO, say BAD_ADDRESS) raises that :class:`RouterError`,
    silence for ``timeout`` s raises :class:`RouterUnavailable`. With ``wait=False`` the
    constructor returns at once and the engine connects in the background (sends made
    meanwhile are queued). Later ERRORs are kept in :attr:`errors` and handed to
    ``on_error`` (default: logged as a warning).

    ``max_pending`` bounds reliable messages not yet ACCEPTED by the router (0: no
    bound): beyond it :meth:`send` waits up to ``send_timeout`` s, then raises
    :class:`PendingLimitError`.

    ``keep_receipts`` bounds the receipts kept for :meth:`status` and those waiting for
    the application to take them (:meth:`poll`, callbacks): past it the oldest waiting
    are dropped and a warning says so, since their callbacks will not run. A client
    that takes receipts through callbacks must poll often enough, or raise it.

    ``keep_unbound`` bounds the released addresses (:meth:`unbind`) whose cursors the
    connection keeps, so that binding one again resumes where it was: a gateway
    releases every app address it ever served, and past it the oldest released are
    forgotten (binding one of those starts over at the cursor given; the router
    redelivers what it was never acked for).

    ``endpoint`` may name several routers, comma separated: an active router on a shared
    store and its standbys (docs/REDIS.md). The engine stays on one and moves to the
    next when the link has been down, or the router silent past its liveness, for
    ``failover_after`` s; what was not ACCEPTED is resent there (the store's dedup
    keeps it once).

    An authenticated router (docs/PROTOCOL.md §11) needs ``server_key`` (its public
    key: Z85 text or its ``.key`` file) and ``key`` (this client's ``.key_secret`` file
    from ``router keygen``, or a ``(public, secret)`` Z85 pair); or ``plain=(name,
    password)`` where the router takes PLAIN.
    """

    def __init__(self, endpoint: str, name: str, role: Role, *,
                 context: zmq.Context | None = None, timeout: float = 5.0,
                 wait: bool = True, compress_above: int = COMPRESS_ABOVE,
                 resend_after: float = 3.0, keep_receipts: int = 100_000,
                 max_pending: int = 0, send_timeout: float = 5.0,
                 reconnect_ivl: float = 0.1, reconnect_ivl_max: float = 0.0,
                 failover_after: float = 1.0, keep_unbound: int = 10_000,
                 on_receipt: Callable[[Receipt], None] | None = None,
                 on_error: Callable[[RouterError], None] | None = None,
                 on_event: Callable[[str], None] | None = None,
                 on_reply: Callable[[Reply], None] | None = None,
                 cursors: dict[str, int] | None = None,
                 welcome_frame: bytes | None = None,
                 server_key: str | None = None, key: str | tuple[str, str] | None = None,
                 plain: tuple[str, str] | None = None,
                 use_fd: bool = False) -> None:
        if max_pending < 0:
            raise ValueError(f"max_pending must be >= 0 (0: no bound), got {max_pending}")
        self.endpoint, self.name, self.role = endpoint, name, Role(role)
        self.compress_above = compress_above
        self.max_pending, self.send_timeout = max_pending, send_timeout
        self.on_receipt, self.on_error, self.on_event = on_receipt, on_error, on_event
        self.on_reply = on_reply
        #: The latest router ERRORs seen on this connection, oldest first.
        self.errors: collections.deque[RouterError] = collections.deque(maxlen=1000)
        #: The router's latest WELCOME (None until the first).
        self.welcome: Welcome | None = None
        #: Whether the connection is up (as libzmq's monitor last said).
        self.connected = False
        self._refused: RouterError | None = None
        self._replies: dict[int, Reply] = {}
        self._callbacks: dict[int, Callable[[Receipt], None]] = {}
        self._inbox: collections.deque[tuple] = collections.deque(maxlen=keep_receipts)
        self._keep_receipts, self._dropped_receipts = max(keep_receipts, 1), 0
        # Sender-chosen ids: a random 32-bit prefix per client and a counter, so two
        # runs of one service do not reuse ids inside the router's dedup window.
        self._ids = itertools.count((int.from_bytes(os.urandom(4), "big") << 32) | 1)
        self.context = context or zmq.Context.instance()
        endpoints = split_endpoints(endpoint)
        self.socket = make_socket(self.context, endpoints[0], reconnect_ivl,
                                  reconnect_ivl_max, client_options(server_key, key, plain))
        self._monitor = self.socket.get_monitor_socket(LINK_EVENTS)
        self.engine = Engine(self.socket.underlying, self._monitor.underlying, int(role),
                             name.encode(), resend_after=resend_after,
                             keep_receipts=keep_receipts, use_app_fd=use_fd,
                             endpoints=[e.encode() for e in endpoints],
                             failover_after=failover_after, keep_unbound=keep_unbound)
        if cursors:
            self.engine.preset([(check_address(a).encode(), int(seq))
                                for a, seq in cursors.items()])
        if welcome_frame is not None:
            self.engine.after_welcome(welcome_frame)
        self._thread = threading.Thread(target=self.engine.run, daemon=True,
                                        name=f"router-engine:{name}")
        self._thread.start()
        if wait:
            self._await_welcome(timeout)

    # ------------------------------------------------------------------ connecting

    def _await_welcome(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.welcome is None and self._refused is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._dispatch(self.engine.take(min(left, 0.1)))
        if self.welcome is None:
            self.close(bye=False)
            if self._refused is not None:
                raise self._refused
            raise RouterUnavailable(
                f"no WELCOME from the router at {self.endpoint} within {timeout}s: "
                "is `router serve` running there?")

    # ------------------------------------------------------------------ events

    def _dispatch(self, events: list) -> int:
        """Hand each event to its place; return how many deliveries/requests there were."""
        taken = 0
        accept = self._accept
        for ev in events:
            if type(ev) is Delivery:
                accept(ev)
                taken += 1
                continue
            tag, header, payload = ev
            if tag == "W":
                self.welcome = Welcome(*decode_welcome(header)[:3])
            elif tag == "E":
                self._router_error(RouterError(*decode_error(header, payload)))
            elif tag == "R":
                rid, code = decode_reply(header)
                self._on_reply(Reply(rid, code, payload))
            elif tag == "Q":
                job, ttl, service = decode_request(header)
                self._accept(Request(job, service, ttl, payload))
                taken += 1
            elif tag == "L":
                self.connected = header in (1, 2)
                if header == 3:
                    self._router_error(RouterError(ErrorCode.FORBIDDEN, 0, REFUSED_TEXT))
                if self.on_event is not None:
                    self.on_event(LINK_NAMES[header])
        return taken

    def _on_reply(self, reply: Reply) -> None:
        """A service's reply: to ``on_reply``, else kept for :meth:`take_reply`."""
        if self.on_reply is not None:
            self.on_reply(reply)
        else:
            self._replies[reply.request_id] = reply

    def _accept(self, event: Delivery | Request) -> None:
        """Take one delivery (or request, for workers); the base drops them."""
        log.warning("%s: dropped a %s this client does not take", self.name,
                    type(event).__name__)

    def _router_error(self, err: RouterError) -> None:
        """An ERROR from the router: before WELCOME it refuses the connection (raised by
        the constructor); after, it is recorded and reported."""
        if self.welcome is None and self._refused is None:
            self._refused = err
            return
        self.errors.append(err)
        if self.on_error is not None:
            self.on_error(err)
        else:
            log.warning("%s", err)

    def _take_receipts(self) -> int:
        """Move receipts from the engine to callbacks or the inbox; return how many."""
        got = self.engine.take_receipts()
        if not got:
            return 0
        if len(got) >= self._keep_receipts:  # the engine's queue was full: some dropped?
            self._report_dropped_receipts()
        cbs = self._callbacks
        if self.on_receipt is None and not cbs:
            self._inbox.extend(got)
            return len(got)
        for mid, st, code in got:
            r = Receipt(mid, _STATUS.get(st, st), _CODE.get(code, code))
            if cbs and st != Status.ACCEPTED and mid in cbs:
                cbs.pop(mid)(r)
            if self.on_receipt is not None:
                self.on_receipt(r)
            else:
                self._inbox.append((mid, st, code))
        return len(got)

    def _report_dropped_receipts(self) -> None:
        """Say when receipts were dropped before the application took them: their
        callbacks never run, so a caller counting on them must hear it."""
        dropped = self.engine.stats()["dropped_receipts"]
        if dropped > self._dropped_receipts:
            log.warning("%d receipts were dropped before this client took them (more than "
                        "keep_receipts=%d waited): their callbacks did not run; poll more "
                        "often or raise keep_receipts", dropped - self._dropped_receipts,
                        self._keep_receipts)
            self._dropped_receipts = dropped

    def poll(self, timeout: float = 0.0) -> int:
        """Serve callbacks and take what arrived within ``timeout`` s; return how many
        receipts came."""
        if timeout > 0:
            self.engine.wait_any(timeout)
        self._dispatch(self.engine.take(0.0))
        return self._take_receipts()

    # ------------------------------------------------------------------ sending

    def send(self, target: str, data: Payload, *, kind: str = "",
             msg_class: MsgClass = MsgClass.ORDER, ttl_ms: int = 0, order: str | int = "",
             key: str = "", channel: bool = False, msg_id: int | None = None,
             callback: Callable[[Receipt], None] | None = None,
             timeout: float | None = None) -> int:
        """Send ``data`` to an address (or a channel with ``channel=True``); return the id.

        dict/list payloads go as JSON; payloads above ``compress_above`` bytes go lz4'd.
        ``order`` (``1002`` or ``order:1002``) ties a reliable message to that order's
        history (`router history 1002`); a message sent to an ``order:<id>`` channel is
        tied to it anyway. ``key`` is the raw key field: the conflation key of LOCATION
        messages (for example the rider); ``key="order:1002"`` is the same as ``order``.
        ``callback`` gets the message's final receipt (from :meth:`poll` or
        :meth:`flush`). Raises ValueError for an invalid target (an address is
        ``<kind>:<id>``) or TTL, :class:`PendingLimitError` when ``max_pending`` reliable
        messages wait for the router for longer than ``timeout`` (default
        ``send_timeout``) s.
        """
        key = send_key(order, key, ttl_ms)
        if type(data) is bytes and len(data) <= self.compress_above:
            payload, flags = data, 0   # the common case, without a call
        else:
            payload, flags = encode_payload(data, self.compress_above)
        welcome = self.welcome
        if welcome is not None and len(payload) > welcome.max_payload:
            raise ValueError(
                f"payload of {len(payload)} bytes is over the router's cap of "
                f"{self.welcome.max_payload}; split it or raise max_payload on the router")
        mid = next(self._ids) if msg_id is None else msg_id
        if callback is not None:
            self._callbacks[mid] = callback
        ok = self.engine.send(target.encode(), payload, mid, int(msg_class),
                              kind.encode() if kind else b"", key.encode() if key else b"",
                              ttl_ms, flags, channel, self.max_pending,
                              self.send_timeout if timeout is None else timeout)
        if ok:
            return mid
        self._callbacks.pop(mid, None)
        self._not_sent(SEND_BAD_TARGET if ok is None else SEND_NO_ROOM, target, channel)

    def _not_sent(self, why: int, target: str, channel: bool) -> NoReturn:
        """Raise the error for a send the engine did not queue."""
        if why == SEND_BAD_TARGET:
            if channel:
                check_channel(target)
            check_address(target, "target")
            raise ValueError(f"target {target!r} is not valid")
        raise PendingLimitError(
            f"{self.max_pending} reliable messages already wait for the router's "
            f"ACCEPTED (is the router at {self.endpoint} reachable?); retry later or "
            "raise max_pending")

    def send_many(self, messages: Iterable[tuple[str, Payload]], *, kind: str = "",
                  msg_class: MsgClass = MsgClass.ORDER, ttl_ms: int = 0,
                  order: str | int = "", key: str = "", channel: bool = False,
                  timeout: float | None = None) -> list[int]:
        """Send ``(target, data)`` pairs with the same options as :meth:`send`; return
        their ids in order.

        Byte payloads up to ``compress_above`` go to the engine in one native call per
        batch (well under a microsecond each); others take :meth:`send`'s path. On an
        error (a bad target, :class:`PendingLimitError`) the messages before the one
        it names were sent."""
        batch = Batch(messages, kind=kind, msg_class=msg_class, ttl_ms=ttl_ms,
                       order=order, key=key, channel=channel)
        self._queue_many(batch, self.send_timeout if timeout is None else timeout)
        if not batch.done:
            self._not_sent(SEND_NO_ROOM, batch.messages[batch.next][0], channel)
        return batch.ids

    def _queue_many(self, batch: Batch, block: float) -> None:
        """Queue what is left of ``batch``, waiting up to ``block`` s for room under
        ``max_pending`` each time there is none; stop where there is still none."""
        plain = self.compress_above if self.compress_above >= 0 else NO_LIMIT
        if self.welcome is not None:
            plain = min(plain, self.welcome.max_payload)
        messages, ids = batch.messages, batch.ids
        while not batch.done:
            first = next(self._ids)
            n, why = self.engine.send_many(messages, batch.next, first, batch.msg_class,
                                           batch.kind, batch.key, batch.ttl_ms,
                                           batch.channel, plain, self.max_pending, block)
            self._ids = itertools.count(first + n)
            ids.extend(range(first, first + n))
            batch.next += n
            if why == SEND_DONE or why == SEND_NO_ROOM:
                return
            target, data = messages[batch.next]
            if why == SEND_BAD_TARGET:
                self._not_sent(why, target, batch.channel)
            try:    # to encode, or to refuse: send() says which
                ids.append(Client.send(self, target, data, timeout=block, **batch.options))
            except PendingLimitError:
                return
            batch.next += 1

    @property
    def pending(self) -> int:
        """Reliable messages sent and not yet ACCEPTED (or refused) by the router."""
        return self.engine.pending

    def flush(self, timeout: float = 5.0) -> int:
        """Wait up to ``timeout`` s until the router has taken every reliable message
        sent (ACCEPTED, so it is durable there) and serve callbacks; return how many
        are still pending (0: all taken)."""
        self.engine.flush(timeout)
        self.poll()
        return self.engine.pending

    def status(self, msg_id: int) -> Receipt | None:
        """The latest receipt seen for ``msg_id``, if any (the last ``keep_receipts``)."""
        got = self.engine.status_of(msg_id)
        return None if got is None else Receipt(msg_id, _STATUS[got[0]], _CODE.get(got[1], got[1]))

    def wait(self, msg_id: int, until: Status = Status.DELIVERED, timeout: float = 5.0) -> Receipt:
        """Wait for ``msg_id`` to reach ``until`` (or any final status); return the receipt.

        Raises TimeoutError naming the last status seen."""
        got = self.engine.wait_status(msg_id, int(until), int(Status.DELIVERED), timeout)
        self.poll()
        if got is None:
            r = self.status(msg_id)
            seen = r.status.name if r else "nothing"
            raise TimeoutError(f"message {msg_id}: waited {timeout}s for {until.name}, "
                               f"last receipt: {seen}")
        return Receipt(msg_id, _STATUS[got[0]], _CODE.get(got[1], got[1]))

    def receipts(self, timeout: float = 1.0) -> Iterator[Receipt]:
        """Yield receipts as they come, until ``timeout`` s pass with none (when no
        ``on_receipt`` callback takes them)."""
        while True:
            if not self._inbox:
                self.poll(timeout)
                if not self._inbox:
                    return
            mid, st, code = self._inbox.popleft()
            yield Receipt(mid, _STATUS.get(st, st), _CODE.get(code, code))

    # ------------------------------------------------------------------ requests

    def submit(self, service: str, data: Payload, *, ttl_ms: int = 5000) -> int:
        """Send a request without waiting; return its id for :meth:`take_reply`."""
        payload, _ = encode_payload(data, -1)
        rid = next(self._ids)
        self.engine.send_frames(encode_request(service, rid, ttl_ms), payload)
        return rid

    def take_reply(self, request_id: int) -> Reply | None:
        """The reply to a submitted request if it has arrived (call :meth:`poll`)."""
        return self._replies.pop(request_id, None)

    def request(self, service: str, data: Payload, *, ttl_ms: int = 5000,
                timeout: float | None = None) -> Reply:
        """Ask a service (its workers) and wait for the reply.

        The broker answers every request, at the latest when ``ttl_ms`` passes
        (code NO_SERVICE or EXPIRED); ``timeout`` (default: the TTL plus a second) only
        guards against a router that is gone."""
        rid = self.submit(service, data, ttl_ms=ttl_ms)
        deadline = time.monotonic() + (timeout if timeout is not None else ttl_ms / 1000 + 1)
        while rid not in self._replies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply from service {service!r} within the timeout; "
                                   "is the router running?")
            self._dispatch(self.engine.take(min(left, 0.5)))
        return self._replies.pop(rid)

    def history(self, order_id: str, timeout: float = 5.0) -> list[dict]:
        """The order's timeline from the router's history (the dispute record)."""
        return json_reply(self.request("router.history", str(order_id),
                                       ttl_ms=int(timeout * 1000)))

    def presence(self, addresses: Iterable[str] = (), timeout: float = 5.0) -> dict:
        """Which addresses are online: {address: online_since or None}, where
        online_since is the Unix time in seconds (a float) at which the address's
        current binding began, not a duration; with no addresses, every online one."""
        return json_reply(self.request("router.presence", list(addresses),
                                       ttl_ms=int(timeout * 1000)))

    # ------------------------------------------------------------------ channels

    def join(self, channel: str, addresses: Iterable[str]) -> None:
        """Add addresses to a channel (created on first JOIN)."""
        names = [check_address(a) for a in addresses]
        self.engine.send_frames(encode_join(check_channel(channel), names))

    def leave(self, channel: str, addresses: Iterable[str] = ()) -> None:
        """Remove addresses from a channel; with none, close the channel."""
        names = [check_address(a) for a in addresses]
        self.engine.send_frames(encode_join(check_channel(channel), names, leave=True))

    # ------------------------------------------------------------------ lifetime

    def stats(self) -> dict[str, int]:
        """This connection's counters: sent, delivered, duplicates, receipts, resent,
        hellos, heartbeats, connects, disconnects, pending..."""
        return self.engine.stats()

    def drain(self, timeout: float = 5.0) -> int:
        """Wait for the router to take every pending reliable message (as
        :meth:`flush`), then close; return how many were still pending."""
        left = self.flush(timeout)
        self.close()
        return left

    def close(self, bye: bool = True) -> None:
        """Send what is queued (acks included), say BYE unless told not to, and close."""
        if self.socket.closed:
            return
        self.engine.stop(bye)
        self._thread.join(timeout=5.0)
        if self._thread.is_alive():  # never seen: the loop wakes on the stop signal
            log.error("%s: engine thread did not stop; leaving its socket open", self.name)
            return
        self.socket.disable_monitor()
        self._monitor.close(linger=0)
        self.socket.close(linger=100 if bye else 0)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Sender(Client):
    """A backend service pushing messages to addresses and channels.

    ``name`` scopes the sender's message ids. Every reliable send is answered by receipts
    (ACCEPTED, then DELIVERED, or REFUSED/EXPIRED/FAILED); read them with :meth:`wait`,
    :meth:`receipts`, an ``on_receipt`` callback, or a per-message ``callback``.
    """

    def __init__(self, endpoint: str, name: str, **options: Any) -> None:
        super().__init__(endpoint, name, Role.SENDER, **options)


class Endpoint(Addresses, Client):
    """One party (or a gateway for many): bound addresses, deliveries, acks; it can send
    too (a merchant confirms on the connection it receives on).

    Deliveries of reliable classes carry a per-address ``seq``; ack a delivery once it is
    processed. Redelivered sequences already received are dropped by the engine, so the
    application sees each message once, in order. ``cursors`` ({address: last seq
    held}) resumes where a previous run stopped. ``auto_ack`` (default true): iterating
    acks each delivery when the loop body is done with it; false: acks are the
    application's (:meth:`ack`).
    """

    def __init__(self, endpoint: str, addresses: Iterable[str], *, name: str | None = None,
                 role: Role = Role.ENDPOINT, cursors: dict[str, int] | None = None,
                 auto_ack: bool = True, **options: Any) -> None:
        name, start = self._start_addresses(addresses, name, cursors, auto_ack)
        super().__init__(endpoint, name, role, cursors=start, **options)

    def bind(self, addresses: Iterable[str]) -> None:
        """Bind more addresses on this connection."""
        self._bind(addresses)

    def unbind(self, addresses: Iterable[str]) -> None:
        """Release addresses; their messages wait at the router for the next binder."""
        self._unbind(addresses)

    def recv(self, timeout: float | None = None) -> Delivery | None:
        """The next delivery, or None after ``timeout`` s (None: wait forever)."""
        if not self._ready:
            self._fill(timeout)
        return self._ready.popleft() if self._ready else None

    def recv_many(self, max_count: int = 1000, timeout: float | None = None) -> list[Delivery]:
        """Up to ``max_count`` deliveries: those already here, else waiting up to
        ``timeout`` s for the first batch (None: forever)."""
        if not self._ready:
            self._fill(timeout)
        return self._take_ready(max_count)

    def _fill(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 1.0 if deadline is None else max(deadline - time.monotonic(), 0.0)
            self._dispatch(self.engine.take(left))
            if self._callbacks or self.on_receipt is not None:
                self._take_receipts()
            if self._ready or (deadline is not None and time.monotonic() >= deadline):
                return

    def _accept(self, d: Delivery) -> None:
        self._ready.append(d)

    def __iter__(self) -> Iterator[Delivery]:
        """Deliveries forever; with ``auto_ack`` each is acked when the loop body is
        done with it (when the loop asks for the next one)."""
        while True:
            d = self.recv()
            if d is not None:
                yield d
                if self.auto_ack:
                    self.ack(d)
