"""asyncio SDK: :class:`AsyncSender` and :class:`AsyncEndpoint` over zmq.asyncio.

Same protocol state as the blocking SDK (:mod:`router.session`); a background task per
client reads the socket, answers housekeeping and fans events out to waiters::

    async with await AsyncEndpoint.connect(url, ["user:7"]) as user:
        async for d in user:          # acked when the loop asks for the next one
            print(d.kind, d.payload)
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import AsyncIterator, Callable, Iterable

import zmq
import zmq.asyncio

from .client import FINAL, LINK_EVENTS, make_socket
from .protocol import Command, Delivery, MsgClass, Receipt, Role, Status, prefix
from .session import (
    COMPRESS_ABOVE, EndpointSession, Payload, Reply, RouterError, RouterUnavailable,
    SenderSession, Session, Welcome,
)

__all__ = ["AsyncSender", "AsyncEndpoint"]

log = logging.getLogger("router.aio")


class AsyncClient:
    """A zmq.asyncio DEALER carrying one session, with a reader task: the base of
    AsyncSender, AsyncEndpoint and workers.service_aio.AsyncServiceWorker (subclasses
    take events in :meth:`_dispatch`).

    As in the blocking SDK, an ERROR instead of WELCOME fails the connect with that
    :class:`RouterError`; later ERRORs are kept in :attr:`errors` (the latest 1000) and
    handed to ``on_error`` (default: logged as a warning)."""

    def __init__(self, session: Session, endpoint: str,
                 context: zmq.asyncio.Context | None, *,
                 on_error: Callable[[RouterError], None] | None = None) -> None:
        self.session = session
        self.endpoint = endpoint
        self.context = context or zmq.asyncio.Context.instance()
        self.socket = make_socket(self.context, endpoint)
        self._monitor = self.socket.get_monitor_socket(LINK_EVENTS)
        self._poller = zmq.asyncio.Poller()
        self._poller.register(self.socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self.errors: collections.deque[RouterError] = collections.deque(maxlen=1000)
        self.on_error = on_error
        self._welcomed = asyncio.Event()
        self._refused: RouterError | None = None
        self._reader: asyncio.Task | None = None

    async def _start(self, timeout: float) -> None:
        await self._send_all(self.session.hello())
        self._reader = asyncio.create_task(self._read_loop())
        try:
            await asyncio.wait_for(self._welcomed.wait(), timeout)
        except asyncio.TimeoutError:
            await self.close(bye=False)
            raise RouterUnavailable(
                f"no WELCOME from the router at {self.endpoint} within {timeout}s: "
                "is `router serve` running there?") from None
        if self._refused is not None:
            await self.close(bye=False)
            raise self._refused

    async def _send(self, frames: list[bytes]) -> None:
        await self.socket.send_multipart(frames, copy=False)
        self.session.sent()

    async def _send_all(self, messages: list[list[bytes]]) -> None:
        for frames in messages:
            await self._send(frames)

    async def _read_loop(self) -> None:
        while True:
            for frames in self.session.due():
                await self._send(frames)
            await self._before_wait()
            hb = max(self.session.heartbeat_ms // 2, 1)
            ready = dict(await self._poller.poll(hb))
            if self._monitor in ready:
                await self._follow_link()
            if self.socket not in ready:
                continue
            frames = await self.socket.recv_multipart()
            events, replies = self.session.handle(frames)
            for reply in replies:
                await self._send(reply)
            for ev in events:
                if isinstance(ev, Welcome):
                    self._welcomed.set()
                elif isinstance(ev, RouterError):
                    self._router_error(ev)
                else:
                    self._dispatch(ev)

    def _router_error(self, err: RouterError) -> None:
        """Before WELCOME, an ERROR refuses the connection (``_start`` raises it)."""
        if not self._welcomed.is_set():
            self._refused = err
            self._welcomed.set()  # wakes _start, which sees the refusal
            return
        self.errors.append(err)
        if self.on_error is not None:
            self.on_error(err)
        else:
            log.warning("%s", err)

    async def _follow_link(self) -> None:
        """Connection ups and downs from libzmq's monitor: one HELLO per reconnect."""
        while (event := await self._next_link_event()) is not None:
            if event == zmq.EVENT_DISCONNECTED:
                self.session.link_down()
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                await self._send_all(self.session.link_up())

    async def _next_link_event(self) -> int | None:
        if not await self._monitor.poll(0):
            return None
        frames = await self._monitor.recv_multipart()
        return int.from_bytes(frames[0][:2], "little")

    async def _before_wait(self) -> None:
        """Hook: flush batched work before the reader waits."""

    def _dispatch(self, event) -> None:
        raise NotImplementedError

    async def close(self, bye: bool = True) -> None:
        """Say BYE, stop the reader and close the socket."""
        if self._reader:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
            self._reader = None
        if not self.socket.closed:
            if bye:
                try:
                    await self._send([prefix(Command.BYE)])
                except zmq.ZMQError:
                    pass
            self.socket.disable_monitor()
            self._monitor.close(linger=0)
            self.socket.close(linger=100 if bye else 0)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class AsyncSender(AsyncClient):
    """asyncio twin of :class:`router.client.Sender`; create with :meth:`connect`."""

    def __init__(self, endpoint: str, name: str, *, context=None,
                 compress_above: int = COMPRESS_ABOVE,
                 on_receipt: Callable[[Receipt], None] | None = None,
                 keep_receipts: int = 100_000,
                 on_error: Callable[[RouterError], None] | None = None) -> None:
        super().__init__(SenderSession(name, compress_above), endpoint, context,
                         on_error=on_error)
        self.on_receipt = on_receipt
        self._keep = keep_receipts
        self._latest: dict[int, Receipt] = {}
        self._waiters: dict[int, list[tuple[Status, asyncio.Future]]] = {}
        self._queue: asyncio.Queue[Receipt] = asyncio.Queue()
        self._replies: dict[int, asyncio.Future] = {}

    @classmethod
    async def connect(cls, endpoint: str, name: str, *, timeout: float = 5.0,
                      **kw) -> "AsyncSender":
        """Connect, say HELLO and wait for WELCOME."""
        self = cls(endpoint, name, **kw)
        await self._start(timeout)
        return self

    async def send(self, target: str, data: Payload, *, kind: str = "",
                   msg_class: MsgClass = MsgClass.ORDER, ttl_ms: int = 0,
                   order: str | int = "", key: str = "", channel: bool = False,
                   msg_id: int | None = None) -> int:
        """Send ``data`` to an address or channel; return the message id. ``order``
        (``1002`` or ``order:1002``) ties a reliable message to that order's history;
        the rest as :meth:`router.client.Sender.send`."""
        mid, frames = self.session.send(target, data, kind=kind, msg_class=msg_class,
                                        ttl_ms=ttl_ms, key=key, channel=channel, msg_id=msg_id,
                                        order=order)
        if frames:
            await self._send(frames)
        return mid

    async def request(self, service: str, data: Payload, *, ttl_ms: int = 5000) -> Reply:
        """Ask a service and wait for its reply (the broker answers by the TTL at the
        latest, with NO_SERVICE or EXPIRED)."""
        rid, frames = self.session.request(service, data, ttl_ms)
        fut = asyncio.get_running_loop().create_future()
        self._replies[rid] = fut
        await self._send(frames)
        try:
            return await asyncio.wait_for(fut, ttl_ms / 1000 + 1)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no reply from service {service!r}: is the router running?") from None
        finally:
            self._replies.pop(rid, None)

    async def join(self, channel: str, addresses: Iterable[str]) -> None:
        """Add addresses to a channel."""
        await self._send(self.session.join(channel, addresses))

    async def leave(self, channel: str, addresses: Iterable[str] = ()) -> None:
        """Remove addresses from a channel; with none, close it."""
        await self._send(self.session.join(channel, addresses, leave=True))

    def _dispatch(self, r: Receipt | Reply) -> None:
        if isinstance(r, Reply):
            fut = self._replies.get(r.request_id)
            if fut is not None and not fut.done():
                fut.set_result(r)
            return
        self._latest.pop(r.msg_id, None)
        self._latest[r.msg_id] = r
        for until, fut in self._waiters.pop(r.msg_id, []):
            if r.status == until or r.status in FINAL:
                if not fut.done():
                    fut.set_result(r)
            else:
                self._waiters.setdefault(r.msg_id, []).append((until, fut))
        if len(self._latest) > self._keep:
            del self._latest[next(iter(self._latest))]  # oldest first: dicts keep order
        if self.on_receipt:
            self.on_receipt(r)
        else:
            self._queue.put_nowait(r)

    async def wait(self, msg_id: int, until: Status = Status.DELIVERED,
                   timeout: float = 5.0) -> Receipt:
        """Wait for ``msg_id`` to reach ``until`` or a final status."""
        r = self._latest.get(msg_id)
        if r and (r.status == until or r.status in FINAL):
            return r
        fut = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(msg_id, []).append((until, fut))
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"message {msg_id}: no {until.name} within {timeout}s") from None

    async def receipts(self) -> AsyncIterator[Receipt]:
        """Receipts as they arrive (when no on_receipt callback is set)."""
        while True:
            yield await self._queue.get()


class AsyncEndpoint(AsyncClient):
    """asyncio twin of :class:`router.client.Endpoint`; create with :meth:`connect`."""

    def __init__(self, endpoint: str, addresses: Iterable[str], *, name: str | None = None,
                 role: Role = Role.ENDPOINT, cursors: dict[str, int] | None = None,
                 context=None, on_error: Callable[[RouterError], None] | None = None) -> None:
        addresses = list(addresses)
        name = name or (addresses[0] if addresses else "endpoint")
        super().__init__(EndpointSession(name, addresses, role, cursors), endpoint, context,
                         on_error=on_error)
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self._flushing: asyncio.Task | None = None

    @classmethod
    async def connect(cls, endpoint: str, addresses: Iterable[str], *, timeout: float = 5.0,
                      **kw) -> "AsyncEndpoint":
        """Connect, bind ``addresses`` in HELLO and wait for WELCOME."""
        self = cls(endpoint, addresses, **kw)
        await self._start(timeout)
        return self

    @property
    def cursors(self) -> dict[str, int]:
        """Last sequence acked per address: persist it, and pass it as ``cursors`` to
        resume there after this process restarts."""
        return dict(self.session.acked)

    def _dispatch(self, d: Delivery) -> None:
        self._queue.put_nowait(d)

    async def _before_wait(self) -> None:
        await self.flush()

    async def bind(self, addresses: Iterable[str]) -> None:
        """Bind more addresses."""
        await self._send_all(self.session.bind(addresses))

    async def unbind(self, addresses: Iterable[str]) -> None:
        """Release addresses."""
        await self._send_all(self.session.unbind(addresses))

    def ack(self, delivery: Delivery) -> None:
        """Ack ``delivery`` and everything before it on its address.

        As in the blocking Endpoint: batched while received deliveries still wait in
        this endpoint, sent at once (by a task, since this call does not await) when
        none does."""
        self.session.ack(delivery)
        if self._queue.empty() and self._flushing is None and not self.socket.closed:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # called outside the loop: the reader flushes it
                return
            self._flushing = loop.create_task(self._flush_now())

    async def _flush_now(self) -> None:
        try:
            await self.flush()
        except zmq.ZMQError:
            pass  # closed meanwhile: close() flushed what was pending
        finally:
            self._flushing = None

    async def flush(self) -> None:
        """Send pending acks now."""
        await self._send_all(self.session.take_acks())

    async def recv(self, timeout: float | None = None) -> Delivery | None:
        """The next delivery, or None after ``timeout`` s."""
        await self.flush()
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        """Deliveries forever; each is acked (as :meth:`ack` says) when the loop asks
        for the next one."""
        while True:
            d = await self._queue.get()
            yield d
            self.ack(d)

    async def close(self, bye: bool = True) -> None:
        """Send pending acks, then close (with BYE unless ``bye`` is False)."""
        if self._flushing is not None:
            await self._flushing
        if not self.socket.closed:
            try:
                await self.flush()
            except zmq.ZMQError:
                pass
        await super().close(bye)
