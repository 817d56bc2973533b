"""asyncio SDK: :class:`AsyncSender` and :class:`AsyncEndpoint`, on the same engine.

They are the blocking classes of :mod:`router.client` with awaitable waits: the native
I/O thread (:mod:`router.engine`) does every protocol chore, and signals an eventfd that
the event loop watches (``loop.add_reader``); each wake-up drains a whole batch of
deliveries, replies and receipts. Names, options, errors and semantics are those of the
blocking SDK::

    async with await AsyncEndpoint.connect(url, ["user:7"]) as user:
        async for d in user:          # acked when the loop body is done with it
            print(d.kind, d.payload)
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Iterable

from .client import (
    FINAL, SEND_NO_ROOM, Client, PendingLimitError, Receipt, _CODE, _STATUS, json_reply,
)
from .incoming import Addresses
from .outgoing import Batch
from .protocol import Delivery, Role, Status
from .session import Payload, Reply, RouterUnavailable

__all__ = ["AsyncSender", "AsyncEndpoint", "AsyncClient"]


class AsyncClient(Client):
    """asyncio twin of :class:`router.client.Client`; make it with ``await
    cls.connect(...)`` inside a running event loop. Callbacks run in the loop."""

    def __init__(self, endpoint: str, name: str, role: Role, **options: Any) -> None:
        options.pop("wait", None)
        options.pop("timeout", None)
        super().__init__(endpoint, name, role, wait=False, use_fd=True, **options)
        self._loop = asyncio.get_running_loop()
        self._welcomed = asyncio.Event()
        self._waiters: dict[int, list[tuple[int, asyncio.Future]]] = {}
        self._reply_futures: dict[int, asyncio.Future] = {}
        self._room: asyncio.Event = asyncio.Event()
        self._receipt_queue: asyncio.Queue[Receipt] = asyncio.Queue()
        self._loop.add_reader(self.engine.fileno(), self._on_readable)

    async def _start(self, timeout: float) -> None:
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

    def _on_readable(self) -> None:
        """The engine published: take the whole batch."""
        self.engine.clear_signal()
        self._dispatch(self.engine.take(0.0))
        if self.welcome is not None or self._refused is not None:
            self._welcomed.set()
        self._take_receipts()
        self._room.set()

    def _on_reply(self, reply: Reply) -> None:
        fut = self._reply_futures.pop(reply.request_id, None)
        if fut is not None and not fut.done():
            fut.set_result(reply)
        else:
            super()._on_reply(reply)

    def _take_receipts(self) -> int:
        got = self.engine.take_receipts()
        if len(got) >= self._keep_receipts:  # the engine's queue was full: some dropped?
            self._report_dropped_receipts()
        for mid, st, code in got:
            r = Receipt(mid, _STATUS.get(st, st), _CODE.get(code, code))
            if self._waiters and mid in self._waiters:
                self._resolve(mid, r)
            if st != Status.ACCEPTED and mid in self._callbacks:
                self._callbacks.pop(mid)(r)
            if self.on_receipt is not None:
                self.on_receipt(r)
            else:
                self._receipt_queue.put_nowait(r)
        return len(got)

    def _resolve(self, mid: int, r: Receipt) -> None:
        keep = []
        for until, fut in self._waiters.pop(mid):
            if fut.done():
                continue
            if r.status == until or r.status >= Status.DELIVERED:
                fut.set_result(r)
            else:
                keep.append((until, fut))
        if keep:
            self._waiters[mid] = keep

    async def send(self, target: str, data: Payload, *, timeout: float | None = None,
                   **options: Any) -> int:
        """As :meth:`router.client.Client.send`; at ``max_pending`` it awaits room up to
        ``timeout`` (default ``send_timeout``) s, then raises PendingLimitError."""
        deadline = time.monotonic() + (self.send_timeout if timeout is None else timeout)
        while True:
            try:
                return Client.send(self, target, data, timeout=0.0, **options)
            except PendingLimitError:
                if not await self._await_room(deadline):
                    raise

    async def send_many(self, messages: Iterable[tuple[str, Payload]], *,
                        timeout: float | None = None, **options: Any) -> list[int]:
        """As :meth:`router.client.Client.send_many`; at ``max_pending`` it awaits room
        up to ``timeout`` (default ``send_timeout``) s, then raises PendingLimitError."""
        deadline = time.monotonic() + (self.send_timeout if timeout is None else timeout)
        batch = Batch(messages, **options)
        while True:
            self._queue_many(batch, 0.0)
            if batch.done:
                return batch.ids
            if not await self._await_room(deadline):
                self._not_sent(SEND_NO_ROOM, batch.messages[batch.next][0], batch.channel)

    async def _await_room(self, deadline: float) -> bool:
        """Await the engine's next receipts (room under ``max_pending``), at most until
        ``deadline``; False once it has passed."""
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self._room.clear()
        try:
            await asyncio.wait_for(self._room.wait(), min(left, 0.1))
        except asyncio.TimeoutError:
            pass
        return True

    async def wait(self, msg_id: int, until: Status = Status.DELIVERED,
                   timeout: float = 5.0) -> Receipt:
        """Wait for ``msg_id`` to reach ``until`` (or any final status); return the
        receipt. Raises TimeoutError naming the last status seen."""
        r = self.status(msg_id)
        if r is not None and (r.status == until or r.status in FINAL):
            return r
        fut = self._loop.create_future()
        self._waiters.setdefault(msg_id, []).append((int(until), fut))
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            r = self.status(msg_id)
            seen = r.status.name if r else "nothing"
            raise TimeoutError(f"message {msg_id}: waited {timeout}s for {until.name}, "
                               f"last receipt: {seen}") from None

    async def flush(self, timeout: float = 5.0) -> int:
        """Await until the router has taken every pending reliable message; return how
        many are still pending after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while self.engine.pending and time.monotonic() < deadline:
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), 0.05)
            except asyncio.TimeoutError:
                pass
        return self.engine.pending

    async def poll(self, timeout: float = 0.0) -> int:
        """Let ``timeout`` s pass in the loop (the engine delivers meanwhile); return
        the receipts taken now."""
        if timeout > 0:
            await asyncio.sleep(timeout)
        self._dispatch(self.engine.take(0.0))
        return self._take_receipts()

    async def receipts(self) -> AsyncIterator[Receipt]:
        """Receipts as they arrive (when no on_receipt callback is set)."""
        while True:
            yield await self._receipt_queue.get()

    async def request(self, service: str, data: Payload, *, ttl_ms: int = 5000,
                      timeout: float | None = None) -> Reply:
        """Ask a service and await its reply (the broker answers by the TTL at the
        latest, with NO_SERVICE or EXPIRED)."""
        rid = self.submit(service, data, ttl_ms=ttl_ms)
        fut = self._loop.create_future()
        self._reply_futures[rid] = fut
        try:
            return await asyncio.wait_for(
                fut, timeout if timeout is not None else ttl_ms / 1000 + 1)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no reply from service {service!r} within the timeout; "
                               "is the router running?") from None
        finally:
            self._reply_futures.pop(rid, None)

    async def history(self, order_id: str, timeout: float = 5.0) -> list[dict]:
        """The order's timeline from the router's history (the dispute record)."""
        return json_reply(await self.request("router.history", str(order_id),
                                              ttl_ms=int(timeout * 1000)))

    async def presence(self, addresses: Iterable[str] = (), timeout: float = 5.0) -> dict:
        """Which addresses are online (see :meth:`router.client.Client.presence`)."""
        return json_reply(await self.request("router.presence", list(addresses),
                                              ttl_ms=int(timeout * 1000)))

    async def join(self, channel: str, addresses: Iterable[str]) -> None:
        """Add addresses to a channel."""
        Client.join(self, channel, addresses)

    async def leave(self, channel: str, addresses: Iterable[str] = ()) -> None:
        """Remove addresses from a channel; with none, close it."""
        Client.leave(self, channel, addresses)

    async def drain(self, timeout: float = 5.0) -> int:
        """Await the router taking every pending message, then close."""
        left = await self.flush(timeout)
        await self.close()
        return left

    async def close(self, bye: bool = True) -> None:
        """Send what is queued, say BYE unless told not to, and close."""
        if not self.socket.closed:
            self._loop.remove_reader(self.engine.fileno())
        Client.close(self, bye)
        for fut in list(self._reply_futures.values()):
            if not fut.done():
                fut.cancel()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class AsyncSender(AsyncClient):
    """asyncio twin of :class:`router.client.Sender`; create with :meth:`connect`."""

    def __init__(self, endpoint: str, name: str, **options: Any) -> None:
        super().__init__(endpoint, name, Role.SENDER, **options)

    @classmethod
    async def connect(cls, endpoint: str, name: str, *, timeout: float = 5.0,
                      **options: Any) -> "AsyncSender":
        """Connect, say HELLO and wait for WELCOME."""
        self = cls(endpoint, name, **options)
        await self._start(timeout)
        return self


class AsyncEndpoint(Addresses, AsyncClient):
    """asyncio twin of :class:`router.client.Endpoint`; create with :meth:`connect`.

    ``auto_ack`` (default true): ``async for`` acks each delivery when the loop body is
    done with it; false: acks are the application's (:meth:`ack`)."""

    def __init__(self, endpoint: str, addresses: Iterable[str], *, name: str | None = None,
                 role: Role = Role.ENDPOINT, cursors: dict[str, int] | None = None,
                 auto_ack: bool = True, **options: Any) -> None:
        name, start = self._start_addresses(addresses, name, cursors, auto_ack)
        self._arrived = asyncio.Event()  # one wake-up per batch, not a future per message
        super().__init__(endpoint, name, role, cursors=start, **options)

    @classmethod
    async def connect(cls, endpoint: str, addresses: Iterable[str], *, timeout: float = 5.0,
                      **options: Any) -> "AsyncEndpoint":
        """Connect, bind ``addresses`` in HELLO and wait for WELCOME."""
        self = cls(endpoint, addresses, **options)
        await self._start(timeout)
        return self

    def _accept(self, d: Delivery) -> None:
        self._ready.append(d)
        self._arrived.set()

    async def bind(self, addresses: Iterable[str]) -> None:
        """Bind more addresses."""
        self._bind(addresses)

    async def unbind(self, addresses: Iterable[str]) -> None:
        """Release addresses."""
        self._unbind(addresses)

    async def recv(self, timeout: float | None = None) -> Delivery | None:
        """The next delivery, or None after ``timeout`` s."""
        if not self._ready and not await self._wait_ready(timeout):
            return None
        return self._ready.popleft()

    async def _wait_ready(self, timeout: float | None) -> bool:
        """Wait until a delivery is here (False after ``timeout`` s)."""
        while not self._ready:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except asyncio.TimeoutError:
                return bool(self._ready)
        return True

    async def recv_many(self, max_count: int = 1000,
                        timeout: float | None = None) -> list[Delivery]:
        """Up to ``max_count`` deliveries: those here, else the first batch to come
        within ``timeout`` s."""
        if not self._ready and not await self._wait_ready(timeout):
            return []
        return self._take_ready(max_count)

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        """Deliveries forever; with ``auto_ack`` each is acked when the loop body is
        done with it."""
        ready = self._ready
        while True:
            if not ready:
                await self._wait_ready(None)
            d = ready.popleft()
            yield d
            if self.auto_ack:
                self.ack(d)
