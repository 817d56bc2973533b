"""The worker side of the service protocol (READY / REQUEST / REPLY).

A :class:`ServiceWorker` connects to the router, says HELLO as a WORKER (optionally
binding addresses, so it can also receive deliveries such as rider positions), then
READY for its service, and answers each REQUEST with the handler's result. It
heartbeats like every client and says READY again after a re-HELLO, so it survives a
router restart. Any number of worker processes can join or leave at run time.

A worker with a ``batch_handler`` answers requests together: it holds them (its READY
credit is ``max_batch``, so the router sends that many at once) until ``max_batch`` are
waiting or the oldest has waited ``batch_interval`` s, then answers them all from one
call (the dispatch worker assigns the pending orders together this way).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable


from router import protocol as P
from router.client import Endpoint
from router.protocol import Delivery, ErrorCode, Role
from router.session import Request

log = logging.getLogger("workers.service")

Handler = Callable[[bytes], bytes]
#: Many request payloads -> their reply payloads, in the same order.
BatchHandler = Callable[[list[bytes]], list[bytes]]

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
                 batch_handler: BatchHandler | None = None, batch_interval: float = 1.0,
                 max_batch: int = 256, on_batch_wait: Callable[[float], None] | None = None,
                 **options) -> None:
        if batch_handler is not None:
            credit = max(credit, max_batch)
        self.service, self.handler, self.credit = service, handler, credit
        self.on_delivery = on_delivery
        self.batch_handler, self.batch_interval = batch_handler, batch_interval
        self.max_batch, self.on_batch_wait = max_batch, on_batch_wait
        self.served = 0
        self._pending: list = []
        self._held: list[tuple[float, Request]] = []   # (arrival, request) for a batch
        super().__init__(endpoint, addresses, name=name or f"worker:{service}",
                         role=Role.WORKER, welcome_frame=P.encode_ready(service, credit),
                         **options)

    def _accept(self, event) -> None:
        self._pending.append(event)

    def serve_once(self, timeout: float = 0.1) -> int:
        """Handle what arrives within ``timeout`` s; return the number of requests served."""
        if self._held:   # wake in time for the held batch
            timeout = min(timeout, max(self._held[0][0] + self.batch_interval
                                       - time.monotonic(), 0.0))
        if not self._pending:
            self._dispatch(self.engine.take(timeout))
        served = 0
        events, self._pending = self._pending, []
        for ev in events:
            if isinstance(ev, Request):
                if self.batch_handler is not None:
                    self._held.append((time.monotonic(), ev))
                else:
                    self._answer(ev)
                    served += 1
            elif isinstance(ev, Delivery) and self.on_delivery:
                self.on_delivery(ev)
                self.ack(ev)
        if self._held and (len(self._held) >= self.max_batch or time.monotonic()
                           >= self._held[0][0] + self.batch_interval):
            served += self._answer_batch()
        self.served += served
        return served

    def _answer_batch(self) -> int:
        """Answer every held request from one batch_handler call."""
        held, self._held = self._held, []
        reqs = [r for _, r in held]
        if self.on_batch_wait is not None:
            now = time.monotonic()
            for arrived, _ in held:
                self.on_batch_wait(now - arrived)
        try:
            bodies = [reply_payload(b) for b in self.batch_handler([r.payload for r in reqs])]
            if len(bodies) != len(reqs):
                raise TypeError(f"the batch handler returned {len(bodies)} replies for "
                                f"{len(reqs)} requests")
            replies = [(ErrorCode.NONE, b) for b in bodies]
        except Exception as exc:  # one bad batch must not take the worker down
            log.exception("batch handler failed for %d %s requests", len(reqs), self.service)
            replies = [failure_reply(exc, self.service)] * len(reqs)
        for req, (code, body) in zip(reqs, replies):
            self.engine.send_frames(P.encode_reply(req.job_id, code), body)
        return len(reqs)

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
