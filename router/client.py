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

These classes do their I/O when called (``recv``, ``wait``, ``poll``, ``ack``): a
process that holds a connection and stops calling for longer than the router's
heartbeat timeout (3 s by default) is dropped, and reconnects on the next call.

The asyncio twins are in :mod:`router.aio`. Protocol state lives in
:mod:`router.session`; these classes only move frames.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Callable, Iterable, Iterator

import orjson
import zmq

from .protocol import (
    Command, Delivery, ErrorCode, MsgClass, Receipt, Role, Status, prefix,
)
from .config import check_endpoint
from .session import (
    COMPRESS_ABOVE, EndpointSession, Payload, Reply, RouterError, RouterUnavailable,
    SenderSession, Session, Welcome, payload_json,
)

__all__ = ["Sender", "Endpoint", "RouterError", "RouterUnavailable", "payload_json"]

log = logging.getLogger("router.client")

#: Final receipt statuses: nothing more will come for that message id.
FINAL = frozenset({Status.DELIVERED, Status.EXPIRED, Status.REFUSED, Status.FAILED})


def make_socket(context: zmq.Context, endpoint: str) -> zmq.Socket:
    """A DEALER for one session: unbounded queues (the router applies the bounds),
    reconnect with backoff from 100 ms to 5 s, ZMTP heartbeats to notice a dead link.
    No fixed routing id: the router assigns one per connection, and a reconnect moves
    the session's addresses by HELLO (docs/PROTOCOL.md §1).
    Raises ValueError for an endpoint that is not tcp://host:port or ipc://path."""
    check_endpoint(endpoint)
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
    # Safe here because RCVHWM is 0: libzmq 4.3.5 aborts when the heartbeat timer
    # fires on a connection whose input stopped at its RCVHWM (see router/server.py).
    sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
    sock.connect(endpoint)
    return sock


#: libzmq monitor events a client follows: the link is up after the ZMTP handshake.
LINK_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED


def link_event(monitor: zmq.Socket) -> int | None:
    """Read one monitor event (non-blocking): its zmq.EVENT_* number, or None."""
    try:
        frames = monitor.recv_multipart(zmq.DONTWAIT)
    except zmq.Again:
        return None
    return int.from_bytes(frames[0][:2], "little")


class Client:
    """A DEALER socket carrying one session: the base of Sender, Endpoint and
    workers.service.ServiceWorker (subclasses take events in :meth:`_accept`).

    Connecting waits for the router's WELCOME: an ERROR instead (the router refused the
    HELLO, say BAD_ADDRESS) raises that :class:`RouterError`; silence raises
    :class:`RouterUnavailable`. Later ERRORs (a refused command, another connection
    taking over an address) are kept in :attr:`errors` and handed to ``on_error``
    (default: logged as a warning).
    """

    def __init__(self, session: Session, endpoint: str, context: zmq.Context | None,
                 timeout: float, *,
                 on_error: Callable[[RouterError], None] | None = None) -> None:
        self.session = session
        self.endpoint = endpoint
        self.context = context or zmq.Context.instance()
        self.socket = make_socket(self.context, endpoint)
        self._monitor = self.socket.get_monitor_socket(LINK_EVENTS)
        self._poller = zmq.Poller()
        self._poller.register(self.socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        #: The latest router ERRORs seen on this connection, oldest first.
        self.errors: collections.deque[RouterError] = collections.deque(maxlen=1000)
        self.on_error = on_error
        self._refused: RouterError | None = None
        self._send_all(session.hello())
        deadline = time.monotonic() + timeout
        while session.welcome is None:
            left = deadline - time.monotonic()
            if self._refused is not None or left <= 0:
                Client.close(self, bye=False)
                if self._refused is not None:
                    raise self._refused
                raise RouterUnavailable(
                    f"no WELCOME from the router at {endpoint} within {timeout}s: "
                    "is `router serve` running there?")
            self._pump(min(left, 0.1))

    def _send(self, frames: list[bytes]) -> None:
        self.socket.send_multipart(frames, copy=False)
        self.session.sent()

    def _send_all(self, messages: list[list[bytes]]) -> None:
        for frames in messages:
            self._send(frames)

    def _pump(self, timeout: float | None) -> int:
        """Send housekeeping, wait up to ``timeout`` s for input, handle all that came;
        return how many events were handed to :meth:`_accept`."""
        for frames in self.session.due():
            self._send(frames)
        accepted = 0
        wait_ms = None if timeout is None else int(timeout * 1000)
        # Wake at least every heartbeat period so heartbeats and re-HELLO keep flowing.
        hb = max(self.session.heartbeat_ms // 2, 1)
        wait_ms = hb if wait_ms is None else min(wait_ms, hb)
        ready = dict(self._poller.poll(wait_ms))
        if self._monitor in ready:
            self._follow_link()
        if self.socket not in ready:
            return accepted
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.DONTWAIT)
            except zmq.Again:
                return accepted
            evs, replies = self.session.handle(frames)
            for reply in replies:
                self._send(reply)
            for ev in evs:
                if isinstance(ev, RouterError):
                    self._router_error(ev)
                elif not isinstance(ev, Welcome):
                    self._accept(ev)
                    accepted += 1

    def _follow_link(self) -> None:
        """Connection ups and downs from libzmq's monitor: one HELLO per reconnect."""
        while (event := link_event(self._monitor)) is not None:
            if event == zmq.EVENT_DISCONNECTED:
                self.session.link_down()
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._send_all(self.session.link_up())

    def _accept(self, event: Delivery | Receipt) -> None:
        """Take one delivery or receipt (it may arrive while waiting for WELCOME)."""
        raise NotImplementedError

    def _router_error(self, err: RouterError) -> None:
        """An ERROR from the router: before WELCOME it refuses the connection (raised by
        the constructor); after, it is recorded and reported."""
        if self.session.welcome is None and self._refused is None:
            self._refused = err
            return
        self.errors.append(err)
        self._on_error(err)

    def _on_error(self, err: RouterError) -> None:
        if self.on_error is not None:
            self.on_error(err)
        else:
            log.warning("%s", err)

    def close(self, bye: bool = True) -> None:
        """Say BYE (unless told not to) and close the socket."""
        if self.socket.closed:
            return
        if bye:
            try:
                self.socket.send(prefix(Command.BYE), zmq.DONTWAIT)
            except zmq.ZMQError:
                pass
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
    :meth:`receipts`, or an ``on_receipt`` callback.
    """

    def __init__(self, endpoint: str, name: str, *, context: zmq.Context | None = None,
                 compress_above: int = COMPRESS_ABOVE, timeout: float = 5.0,
                 on_receipt: Callable[[Receipt], None] | None = None,
                 keep_receipts: int = 100_000, resend_after: float = 3.0,
                 on_error: Callable[[RouterError], None] | None = None) -> None:
        self.on_receipt = on_receipt
        self._latest: collections.OrderedDict[int, Receipt] = collections.OrderedDict()
        self._keep = keep_receipts
        self._inbox: collections.deque[Receipt] = collections.deque(maxlen=keep_receipts)
        self._replies: dict[int, Reply] = {}
        super().__init__(SenderSession(name, compress_above, resend_after), endpoint, context,
                         timeout, on_error=on_error)

    def send(self, target: str, data: Payload, *, kind: str = "",
             msg_class: MsgClass = MsgClass.ORDER, ttl_ms: int = 0, order: str | int = "",
             key: str = "", channel: bool = False, msg_id: int | None = None) -> int:
        """Send ``data`` to an address (or a channel with ``channel=True``); return the id.

        dict/list payloads go as JSON; payloads above ``compress_above`` bytes go lz4'd.
        ``order`` (``1002`` or ``order:1002``) ties a reliable message to that order's
        history (`router history 1002`); a message sent to an ``order:<id>`` channel is
        tied to it anyway. ``key`` is the raw key field: the conflation key of LOCATION
        messages (for example the rider); ``key="order:1002"`` is the same as ``order``.
        Raises ValueError for an invalid target (an address is ``<kind>:<id>``) or TTL.
        """
        mid, frames = self.session.send(target, data, kind=kind, msg_class=msg_class,
                                        ttl_ms=ttl_ms, key=key, channel=channel, msg_id=msg_id,
                                        order=order)
        if frames:
            self._send(frames)
        return mid

    def request(self, service: str, data: Payload, *, ttl_ms: int = 5000,
                timeout: float | None = None) -> Reply:
        """Ask a service (its workers) and wait for the reply.

        The broker answers every request, at the latest when ``ttl_ms`` passes
        (code NO_SERVICE or EXPIRED); ``timeout`` (default: the TTL plus a second) only
        guards against a router that is gone.
        """
        rid = self.submit(service, data, ttl_ms=ttl_ms)
        deadline = time.monotonic() + (timeout if timeout is not None else ttl_ms / 1000 + 1)
        while rid not in self._replies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply from service {service!r} within the timeout; "
                                   "is the router running?")
            self._pump(min(left, 0.05))
        return self._replies.pop(rid)

    def history(self, order_id: str, timeout: float = 5.0) -> list[dict]:
        """The order's timeline from the router's history (the dispute record)."""
        reply = self.request("router.history", str(order_id), ttl_ms=int(timeout * 1000))
        if reply.code != ErrorCode.NONE:
            raise RouterError(reply.code, 0, reply.payload.decode(errors="replace"))
        return orjson.loads(reply.payload)

    def presence(self, addresses: Iterable[str] = (), timeout: float = 5.0) -> dict:
        """Which addresses are online: {address: online_since or None}, where
        online_since is the Unix time in seconds (a float) at which the address's
        current binding began, not a duration; with no addresses, every online one."""
        reply = self.request("router.presence", list(addresses), ttl_ms=int(timeout * 1000))
        if reply.code != ErrorCode.NONE:
            raise RouterError(reply.code, 0, reply.payload.decode(errors="replace"))
        return orjson.loads(reply.payload)

    def submit(self, service: str, data: Payload, *, ttl_ms: int = 5000) -> int:
        """Send a request without waiting; return its id for :meth:`take_reply`."""
        rid, frames = self.session.request(service, data, ttl_ms)
        self._send(frames)
        return rid

    def take_reply(self, request_id: int) -> Reply | None:
        """The reply to a submitted request if it has arrived (call :meth:`poll`)."""
        return self._replies.pop(request_id, None)

    def join(self, channel: str, addresses: Iterable[str]) -> None:
        """Add addresses to a channel (created on first JOIN)."""
        self._send(self.session.join(channel, addresses))

    def leave(self, channel: str, addresses: Iterable[str] = ()) -> None:
        """Remove addresses from a channel; with none, close the channel."""
        self._send(self.session.join(channel, addresses, leave=True))

    def poll(self, timeout: float = 0.0) -> int:
        """Handle what the router sent within ``timeout`` s; return how many receipts."""
        return self._pump(timeout)

    def _accept(self, r: Receipt | Reply) -> None:
        if isinstance(r, Reply):
            self._replies[r.request_id] = r
            return
        self._latest[r.msg_id] = r
        self._latest.move_to_end(r.msg_id)
        if len(self._latest) > self._keep:
            self._latest.popitem(last=False)
        if self.on_receipt:
            self.on_receipt(r)
        else:
            self._inbox.append(r)

    def receipts(self, timeout: float = 1.0) -> Iterator[Receipt]:
        """Yield receipts as they come, until ``timeout`` s pass with none."""
        while True:
            if not self._inbox:
                self.poll(timeout)
                if not self._inbox:
                    return
            yield self._inbox.popleft()

    def status(self, msg_id: int) -> Receipt | None:
        """The latest receipt seen for ``msg_id``, if any."""
        return self._latest.get(msg_id)

    def wait(self, msg_id: int, until: Status = Status.DELIVERED, timeout: float = 5.0) -> Receipt:
        """Wait for ``msg_id`` to reach ``until`` (or any final status); return the receipt.

        Raises TimeoutError naming the last status seen.
        """
        deadline = time.monotonic() + timeout
        while True:
            r = self._latest.get(msg_id)
            if r and (r.status == until or r.status in FINAL):
                return r
            left = deadline - time.monotonic()
            if left <= 0:
                seen = r.status.name if r else "nothing"
                raise TimeoutError(f"message {msg_id}: waited {timeout}s for {until.name}, "
                                   f"last receipt: {seen}")
            self.poll(min(left, 0.05))


class Endpoint(Client):
    """One party (or a gateway for many): bound addresses, deliveries, acks.

    Deliveries of reliable classes carry a per-address ``seq``; ack a delivery once it is
    processed. Acks are cumulative: while deliveries already received wait in this
    endpoint for :meth:`recv`, acks are batched into the next ACK; once the application
    has caught up (nothing left waiting), :meth:`ack` sends the ACK at once. Redelivered sequences already handed
    over are dropped here, so the application sees each message once, in order.
    ``cursors`` ({address: last seq held}) resumes where a previous run stopped.
    """

    def __init__(self, endpoint: str, addresses: Iterable[str], *, name: str | None = None,
                 role: Role = Role.ENDPOINT, cursors: dict[str, int] | None = None,
                 context: zmq.Context | None = None, timeout: float = 5.0,
                 on_error: Callable[[RouterError], None] | None = None) -> None:
        addresses = list(addresses)
        name = name or (addresses[0] if addresses else "endpoint")
        self._ready: collections.deque[Delivery] = collections.deque()
        super().__init__(EndpointSession(name, addresses, role, cursors), endpoint, context,
                         timeout, on_error=on_error)

    @property
    def duplicates(self) -> int:
        """Redelivered messages dropped because this endpoint already had them."""
        return self.session.duplicates

    @property
    def cursors(self) -> dict[str, int]:
        """Last sequence acked per address: persist it, and pass it as ``cursors`` to
        resume there after this process restarts."""
        return dict(self.session.acked)

    def bind(self, addresses: Iterable[str]) -> None:
        """Bind more addresses on this connection."""
        self._send_all(self.session.bind(addresses))

    def unbind(self, addresses: Iterable[str]) -> None:
        """Release addresses; their messages wait at the router for the next binder."""
        self._send_all(self.session.unbind(addresses))

    def ack(self, delivery: Delivery) -> None:
        """Ack ``delivery`` and all before it on its address.

        Sent at once when no received delivery is waiting for :meth:`recv` (the
        application has caught up, so the sender hears DELIVERED without waiting for
        this endpoint's next call); otherwise batched with the acks of the deliveries
        still waiting, and sent by the :meth:`recv` that finds none left."""
        self.session.ack(delivery)
        if not self._ready and not self.socket.closed:
            self.flush()

    def flush(self) -> None:
        """Send pending acks now."""
        self._send_all(self.session.take_acks())

    def recv(self, timeout: float | None = None) -> Delivery | None:
        """The next delivery, or None after ``timeout`` s (None: wait forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready:
            self.flush()
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            self._pump(left)  # at least one look, even with timeout 0
            if not self._ready and left == 0.0:
                return None
        return self._ready.popleft()

    def _accept(self, d: Delivery) -> None:
        self._ready.append(d)

    def __iter__(self) -> Iterator[Delivery]:
        """Deliveries forever; each is acked when the loop asks for the next one (the
        ACK batched as :meth:`ack` says)."""
        while True:
            d = self.recv()
            if d is not None:
                yield d
                self.ack(d)

    def close(self, bye: bool = True) -> None:
        """Send pending acks, then close (with BYE unless ``bye`` is False)."""
        if not self.socket.closed:
            self.flush()
        super().close(bye)
