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
from router.aio import AsyncEndpoint
from router.protocol import Delivery, ErrorCode, Role
from router.session import Request
from workers.service import BadRequest, reply_payload, failure_reply

__all__ = ["AsyncServiceWorker", "BadRequest"]

log = logging.getLogger("workers.service")

AsyncHandler = Callable[[bytes], Union[bytes, Awaitable[bytes]]]


class AsyncServiceWorker(AsyncEndpoint):
    """Serve ``service`` with ``handler`` (request payload -> reply payload); create it
    with :meth:`connect`.

    ``on_delivery`` receives deliveries for ``addresses`` (acked after it returns). A
    handler exception is logged with its traceback and answered: WORKER_FAILED with the
    exception's type and message, or MALFORMED when it raised :class:`BadRequest`.
    READY goes again after every WELCOME from the engine's I/O thread.
    """

    def __init__(self, endpoint: str, service: str, handler: AsyncHandler, *,
                 name: str | None = None, credit: int = 1, addresses: Iterable[str] = (),
                 on_delivery: Callable[[Delivery], None] | None = None,
                 **options) -> None:
        self.service, self.handler, self.credit = service, handler, credit
        self.on_delivery = on_delivery
        self.served = 0
        self._running: set[asyncio.Task] = set()
        self._closed = asyncio.Event()
        super().__init__(endpoint, addresses, name=name or f"worker:{service}",
                         role=Role.WORKER, welcome_frame=P.encode_ready(service, credit),
                         **options)

    @classmethod
    async def connect(cls, endpoint: str, service: str, handler: AsyncHandler, *,
                      timeout: float = 5.0, **kwargs) -> "AsyncServiceWorker":
        """Connect, say HELLO, wait for WELCOME (READY follows it)."""
        worker = cls(endpoint, service, handler, **kwargs)
        await worker._start(timeout)
        return worker

    async def run(self) -> None:
        """Serve until the worker is closed (or this task is cancelled)."""
        await self._closed.wait()

    def _accept(self, event) -> None:
        if isinstance(event, Request):
            task = asyncio.create_task(self._answer(event))
            self._running.add(task)  # keep a reference until it is done
            task.add_done_callback(self._running.discard)
        elif isinstance(event, Delivery) and self.on_delivery:
            self.on_delivery(event)
            self.ack(event)

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
        if not self.socket.closed:
            self.engine.send_frames(P.encode_reply(req.job_id, code), body)
        self.served += 1

    async def close(self, bye: bool = True) -> None:
        """Cancel requests still running (the router retries them elsewhere), then close
        (pending acks go first; BYE unless ``bye`` is False)."""
        for task in list(self._running):
            task.cancel()
        await super().close(bye)
        self._closed.set()
