"""The worker side of the service protocol on asyncio: :class:`AsyncServiceWorker`.

The asyncio twin of :class:`workers.service.ServiceWorker` for services that already
live in an event loop::

    async def score(body: bytes) -> bytes:
        ...
    worker = await AsyncServiceWorker.connect(url, "dispatch.score", score, credit=4)
    await worker.run()           # until cancelled, or worker.close()

The handler may be a plain function or a coroutine function. Up to ``credit`` requests
run at once (the router never hands out more); each is answered when its handler
returns, so a slow request does not hold up the others.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Awaitable, Callable, Iterable, Union

from router import protocol as P
from router.aio import AsyncClient
from router.protocol import Delivery, ErrorCode, Role
from router.session import EndpointSession, Request, Welcome
from workers.service import BadRequest, reply_payload, failure_reply

__all__ = ["AsyncServiceWorker", "BadRequest"]

log = logging.getLogger("workers.service")

AsyncHandler = Callable[[bytes], Union[bytes, Awaitable[bytes]]]


class AsyncServiceWorker(AsyncClient):
    """Serve ``service`` with ``handler`` (request payload -> reply payload); create it
    with :meth:`connect`.

    ``on_delivery`` receives deliveries for ``addresses`` (acked after it returns). A
    handler exception is logged with its traceback and answered: WORKER_FAILED with the
    exception's type and message, or MALFORMED when it raised :class:`BadRequest`.
    """

    def __init__(self, endpoint: str, service: str, handler: AsyncHandler, *,
                 name: str | None = None, credit: int = 1, addresses: Iterable[str] = (),
                 on_delivery: Callable[[Delivery], None] | None = None,
                 context=None) -> None:
        super().__init__(EndpointSession(name or f"worker:{service}", addresses, Role.WORKER),
                         endpoint, context)
        self.service, self.handler, self.credit = service, handler, credit
        self.on_delivery = on_delivery
        self.served = 0
        self._ready_for: Welcome | None = None
        self._running: set[asyncio.Task] = set()

    @classmethod
    async def connect(cls, endpoint: str, service: str, handler: AsyncHandler, *,
                      timeout: float = 5.0, **kwargs) -> "AsyncServiceWorker":
        """Connect, say HELLO, wait for WELCOME and say READY."""
        worker = cls(endpoint, service, handler, **kwargs)
        await worker._start(timeout)
        await worker._say_ready()
        return worker

    async def run(self) -> None:
        """Serve until the worker is closed (or this task is cancelled)."""
        if self._reader is not None:
            await asyncio.shield(self._reader)

    async def _say_ready(self) -> None:
        """READY once per WELCOME: a re-HELLO (router restart) needs it again."""
        welcome = self.session.welcome
        if welcome is not None and welcome is not self._ready_for:
            self._ready_for = welcome
            await self._send([P.encode_ready(self.service, self.credit)])

    async def _before_wait(self) -> None:
        await self._say_ready()
        await self._send_all(self.session.take_acks())

    def _dispatch(self, event) -> None:
        if isinstance(event, Request):
            task = asyncio.create_task(self._answer(event))
            self._running.add(task)  # keep a reference until it is done
            task.add_done_callback(self._running.discard)
        elif isinstance(event, Delivery) and self.on_delivery:
            self.on_delivery(event)
            self.session.ack(event)

    async def _answer(self, req: Request) -> None:
        try:
            body = self.handler(req.payload)
            if inspect.isawaitable(body):
                body = await body
            body = reply_payload(body)
            code = ErrorCode.NONE
        except Exception as exc:  # one request must not take the worker down
            log.exception("handler failed for %s job %d", req.service, req.job_id)
            code, body = failure_reply(exc, req.service)
        await self._send([P.encode_reply(req.job_id, code), body])
        self.served += 1

    async def close(self, bye: bool = True) -> None:
        """Cancel requests still running (the router retries them elsewhere), send
        pending acks, then close (with BYE unless ``bye`` is False)."""
        for task in list(self._running):
            task.cancel()
        if not self.socket.closed:
            try:
                await self._send_all(self.session.take_acks())
            except Exception:  # closing anyway
                pass
        await super().close(bye)
