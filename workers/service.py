"""The worker side of the service protocol (READY / REQUEST / REPLY).

A :class:`ServiceWorker` connects to the router, says HELLO as a WORKER (optionally
binding addresses, so it can also receive deliveries such as rider positions), then
READY for its service, and answers each REQUEST with the handler's result. It
heartbeats like every client and says READY again after a re-HELLO, so it survives a
router restart. Any number of worker processes can join or leave at run time.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

import zmq

from router import protocol as P
from router.client import Endpoint
from router.protocol import Delivery, ErrorCode, Role
from router.session import Request

log = logging.getLogger("workers.service")

Handler = Callable[[bytes], bytes]

#: Longest failure text sent back to the requester (the traceback stays in the log).
MAX_FAILURE_TEXT = 500


class BadRequest(ValueError):
    """Raise from a handler when the request itself is wrong: the requester gets a REPLY
    with code MALFORMED and this message (any other exception is WORKER_FAILED)."""


def failure_reply(exc: BaseException, service: str) -> tuple[ErrorCode, bytes]:
    """The REPLY status and payload for a handler that raised ``exc``: MALFORMED for a
    :class:`BadRequest` (the client's fault), else WORKER_FAILED (ours); the payload is
    the exception's type and message, no traceback. The caller logs the traceback."""
    code = ErrorCode.MALFORMED if isinstance(exc, BadRequest) else ErrorCode.WORKER_FAILED
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if len(text) > MAX_FAILURE_TEXT:
        text = text[:MAX_FAILURE_TEXT - 3] + "..."
    return code, f"{service}: {text}".encode()


def reply_payload(body: object) -> bytes:
    """A handler's result as the REPLY payload; another type is the handler's bug."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    raise TypeError(f"the handler returned {type(body).__name__}, not bytes")


class ServiceWorker(Endpoint):
    """Serve ``service`` with ``handler`` (request payload -> reply payload).

    ``on_delivery`` receives deliveries for ``addresses`` (acked after it returns).
    A handler exception is logged with its traceback and answered, so it cannot kill the
    worker: the requester gets WORKER_FAILED with the exception's type and message, or
    MALFORMED when the handler raised :class:`BadRequest`. The connection lives on the
    client engine's I/O thread: heartbeats go on while a handler runs, and READY goes
    again after every WELCOME (a router restart) without the worker's help.
    """

    def __init__(self, endpoint: str, service: str, handler: Handler, *,
                 name: str | None = None, credit: int = 1, addresses: Iterable[str] = (),
                 on_delivery: Callable[[Delivery], None] | None = None,
                 **options) -> None:
        self.service, self.handler, self.credit = service, handler, credit
        self.on_delivery = on_delivery
        self.served = 0
        self._pending: list = []
        super().__init__(endpoint, addresses, name=name or f"worker:{service}",
                         role=Role.WORKER, welcome_frame=P.encode_ready(service, credit),
                         **options)

    def _accept(self, event) -> None:
        self._pending.append(event)

    def serve_once(self, timeout: float = 0.1) -> int:
        """Handle what arrives within ``timeout`` s; return the number of requests served."""
        if not self._pending:
            self._dispatch(self.engine.take(timeout))
        served = 0
        events, self._pending = self._pending, []
        for ev in events:
            if isinstance(ev, Request):
                self._answer(ev)
                served += 1
            elif isinstance(ev, Delivery) and self.on_delivery:
                self.on_delivery(ev)
                self.ack(ev)
        self.served += served
        return served

    def _answer(self, req: Request) -> None:
        try:
            body, code = reply_payload(self.handler(req.payload)), ErrorCode.NONE
        except Exception as exc:  # one request must not take the worker down
            log.exception("handler failed for %s job %d", req.service, req.job_id)
            code, body = failure_reply(exc, req.service)
        self.engine.send_frames(P.encode_reply(req.job_id, code), body)

    def run(self, should_stop: Callable[[], bool] = lambda: False,
            seconds: float | None = None) -> None:
        """Serve until ``should_stop()`` is true or ``seconds`` pass."""
        end = None if seconds is None else time.monotonic() + seconds
        while not should_stop() and (end is None or time.monotonic() < end):
            self.serve_once(0.1)
