"""Service broker: requests balanced over live workers (the Majordomo pattern).

A worker connects like any peer (HELLO, role WORKER), then says READY with a service
name and a credit (requests it takes in parallel; 0 pauses it). A client sends
REQUEST(service, request id, ttl); the broker picks the worker with free credit that has
waited longest, forwards the request under a broker-assigned job id, and routes the
worker's REPLY back under the client's request id. When a worker dies (heartbeat timeout,
unreachable, BYE) its jobs go to another worker; a request whose TTL passes before a
reply gets a REPLY with ``NO_SERVICE`` (never served) or ``EXPIRED``.

Everything a peer can make the broker hold is bounded: registered services (a worker
said READY for them, at most ``max_services``), requests waiting per service, requests
waiting for names no worker registered, and the bytes of all requests held. Bad service
commands get an ERROR that names what was wrong in protocol terms, at most
``errors_per_second`` per peer per second, as the core does for every other command.

Service traffic is thousands of messages a second at most, so this lives in Python; the
native core hands it over (Core.drain_broker) and returns from its loop right away.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from . import protocol as P
from .auth.grants import Action, Principal
from .lograte import RateLimitedLog
from .protocol import Command, ErrorCode, Role
from .service_headers import ID_END, SPEC, Refusal, parse_ready, parse_reply, \
    parse_request, role_name

log = logging.getLogger("router.broker")

#: Times a request is handed to a worker before it fails with WORKER_FAILED.
MAX_ATTEMPTS = 3
#: Service names that may be registered (a worker said READY for them) at once.
MAX_SERVICES = 1000
#: Requests waiting for a worker, per registered service; beyond it: REPLY QUEUE_FULL.
MAX_WAITING = 10_000
#: Requests waiting, over all names, for services no worker has registered (yet).
MAX_UNREGISTERED = 10_000
#: Payload bytes of all requests the broker holds (waiting or being served).
MAX_HELD_BYTES = 256 << 20
#: Requests one client connection may have held at once (waiting or being served);
#: beyond it: REPLY QUEUE_FULL. One client cannot fill the broker for the others.
MAX_PER_CLIENT = 1000
#: How long a request with TTL 0 ("no TTL") waits at most, ms: nothing waits forever.
MAX_WAIT_MS = 60_000
#: Connections whose non-WORKER role the broker remembers (to refuse their READY).
MAX_TRACKED_PEERS = 1 << 20
#: Workers checked against the core's live connections per broker tick (Broker.reap).
REAP_PER_TICK = 2000
#: Upper bounds (seconds) of the request-to-reply histogram.
LATENCY_BOUNDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]

class ErrorLimiter:
    """At most ``per_second`` ERRORs per peer per second, as the core does: the next one
    is RATE_LIMITED, the rest of that second is only counted."""

    SEND, NOTICE, SUPPRESS = 0, 1, 2

    def __init__(self, per_second: int) -> None:
        self.per_second = max(per_second, 1)
        self._windows: dict[bytes, list] = {}  # identity -> [window start, errors in it]

    def admit(self, identity: bytes, now: float) -> tuple[int, int]:
        """(verdict, errors of this peer in this second so far): SEND this error as is,
        send the RATE_LIMITED NOTICE instead, or SUPPRESS it."""
        w = self._windows.get(identity)
        if w is None or now - w[0] >= 1.0:
            w = self._windows[identity] = [now, 0]
        w[1] += 1
        if w[1] <= self.per_second:
            return self.SEND, w[1]
        return (self.NOTICE if w[1] == self.per_second + 1 else self.SUPPRESS), w[1]

    def prune(self, now: float) -> None:
        """Forget windows that are over (so the table holds only this second's peers)."""
        for ident in [i for i, w in self._windows.items() if now - w[0] >= 1.0]:
            del self._windows[ident]


@dataclass
class Job:
    """One client request, from arrival until its reply (or failure)."""

    job_id: int
    client: bytes
    request_id: int
    service: str
    payload: bytes
    deadline: float  # monotonic (TTL 0: MAX_WAIT_MS from arrival)
    worker: bytes | None = None
    attempts: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass
class Worker:
    """A worker that said READY."""

    identity: bytes
    service: str
    credit: int
    jobs: set[int] = field(default_factory=set)

    @property
    def free(self) -> int:
        """Requests it can take now (its credit may have been lowered below its jobs)."""
        return max(self.credit - len(self.jobs), 0)


class Service:
    """A registered service: its workers and the requests waiting for one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.workers: OrderedDict[bytes, Worker] = OrderedDict()  # every worker
        #: the workers with free credit, longest-waiting first: picking one is O(1)
        #: however many busy or paused workers there are (thousands, under a flood)
        self.free: OrderedDict[bytes, Worker] = OrderedDict()
        self.waiting: OrderedDict[int, Job] = OrderedDict()  # job id -> job, oldest first

    def pick(self) -> Worker | None:
        """The worker with free credit that has waited longest; it moves to the back."""
        if not self.free:
            return None
        ident, w = next(iter(self.free.items()))
        self.free.move_to_end(ident)
        return w

    def refresh(self, w: Worker) -> None:
        """After ``w``'s credit or jobs changed: in :attr:`free` if it has credit left."""
        if w.free and w.identity in self.workers:
            if w.identity not in self.free:
                self.free[w.identity] = w
        else:
            self.free.pop(w.identity, None)

    def remove(self, identity: bytes) -> None:
        """The worker left (or moved to another service)."""
        self.workers.pop(identity, None)
        self.free.pop(identity, None)

    def idle(self) -> bool:
        """No workers and no requests: it can make room for another service."""
        return not self.workers and not self.waiting


#: How the broker sends: (routing id, header frame, payload frame) -> sent or not.
#: The router passes :meth:`router.core.Core.send`, so its sends go through the core.
SendFn = Callable[[bytes, bytes, bytes], bool]


class Broker:
    """Routes REQUEST/REPLY between clients and service workers. It reads what the core
    hands it (:meth:`handle`, :meth:`peer_connected`, :meth:`peer_gone`) and sends
    through ``send``; it never touches the socket itself."""

    def __init__(self, send: SendFn,
                 builtins: dict[str, Callable[[bytes, Principal | None], bytes]] | None = None,
                 *,
                 errors_per_second: int = 20, max_services: int = MAX_SERVICES,
                 max_waiting: int = MAX_WAITING,
                 max_unregistered: int = MAX_UNREGISTERED,
                 max_per_client: int = MAX_PER_CLIENT, max_wait_ms: int = MAX_WAIT_MS) -> None:
        self._send_fn = send
        #: Services the router answers itself (``router.history``, ``router.presence``).
        self.builtins = builtins or {}
        self.max_services, self.max_waiting = max_services, max_waiting
        self.max_unregistered = max_unregistered
        self.max_per_client, self.max_wait_ms = max_per_client, max_wait_ms
        self.services: dict[str, Service] = {}  # registered ones only
        self.workers: dict[bytes, Worker] = {}
        self.jobs: dict[int, Job] = {}
        #: Requests for names no worker registered: name -> {job id: job}, bounded in all.
        self.unregistered: dict[str, OrderedDict[int, Job]] = {}
        self._unregistered_n = 0
        self._held_bytes = 0
        self._deadlines: list[tuple[float, int]] = []  # heap of (deadline, job id)
        self._by_client: dict[bytes, set[int]] = {}  # connection -> ids of its jobs
        self._not_workers: dict[bytes, int] = {}  # connection -> its non-WORKER HELLO role
        self._limiter = ErrorLimiter(errors_per_second)
        self._logs = {kind: RateLimitedLog(log, what) for kind, what in (
            ("ready", "worker ready"), ("gone", "worker gone"),
            ("refused", "refused service command"))}
        self._ids = itertools.count(1)
        self.counters = {"requests": 0, "replies": 0, "retried": 0, "expired": 0,
                         "no_service": 0, "failed": 0, "queue_full": 0, "late_replies": 0,
                         "abandoned": 0, "forbidden": 0, "reaped": 0}
        self._reap_order: list[bytes] | None = None
        #: ERRORs decided, by code (before the rate limit), and what the limit held back.
        self.errors: dict[int, int] = {}
        self.errors_rate_limited = 0  # RATE_LIMITED notices sent in place of an error
        self.errors_suppressed = 0  # errors not sent at all
        self.latency_buckets = [0] * (len(LATENCY_BOUNDS) + 1)  # request -> reply
        self.latency_sum = 0.0

    # ---- input -------------------------------------------------------------------------

    def handle(self, identity: bytes, header: bytes, payload: bytes,
               principal: Principal | None = None) -> None:
        """One READY/REQUEST/REPLY from the core (which checked prefix and frame count);
        ``principal``: the connection's (None: an open router, everything allowed)."""
        at = P.PREFIX_AT["PREFIX_COMMAND"]
        command = header[at] if len(header) > at else 0
        try:
            if command == Command.READY:
                self._on_ready(identity, header, principal)
            elif command == Command.REQUEST:
                self._on_request(identity, header, payload, principal)
            elif command == Command.REPLY:
                self._on_reply(identity, header, payload)
            else:
                raise Refusal(ErrorCode.UNKNOWN_COMMAND,
                              f"command {command:#04x} is not a service command")
        except Refusal as r:
            self._error(identity, r.code, r.text, r.msg_id)

    def peer_connected(self, identity: bytes, role: int) -> None:
        """A connection said HELLO (again) with ``role``: only a WORKER may say READY.
        A worker that re-HELLOs as something else leaves its service's pool."""
        if role == Role.WORKER:
            self._not_workers.pop(identity, None)
            return
        if identity in self.workers:
            self.worker_gone(identity)
        if len(self._not_workers) < MAX_TRACKED_PEERS:  # beyond it: READY is let through
            self._not_workers[identity] = role

    def peer_gone(self, identity: bytes) -> None:
        """A connection is gone (BYE, heartbeat timeout, unreachable): as a worker its
        jobs go to other workers; as a client its requests are dropped (nobody is left
        to answer; a worker holding one keeps the credit until its REPLY, which is then
        dropped as late)."""
        self._not_workers.pop(identity, None)
        self.worker_gone(identity)
        for job_id in self._by_client.pop(identity, ()):
            job = self.jobs.get(job_id)
            if job is not None:
                self.counters["abandoned"] += 1
                self._forget(job, release_worker=False)

    def _on_ready(self, identity: bytes, header: bytes,
                  principal: Principal | None = None) -> None:
        role = self._not_workers.get(identity)
        if role is not None:
            raise Refusal(ErrorCode.BAD_ROLE,
                          f"READY is for workers: this connection said HELLO with role "
                          f"{role_name(role)}; "
                          f"say HELLO with role 4 (WORKER) first ({SPEC})")
        credit, name = parse_ready(header)
        if principal is not None and not principal.allows(Action.SERVE, name):
            raise Refusal(ErrorCode.FORBIDDEN, f"your credentials do not allow serving "
                          f"{name!r} (see 'serve' of principal {principal.name!r})")
        if name in self.builtins:
            raise Refusal(ErrorCode.MALFORMED,
                          f"service {name!r} is answered by the router itself: a worker "
                          f"cannot serve it; pick another service name")
        svc = self.services.get(name) or self._register(name)  # may refuse: stay as is
        old = self.workers.get(identity)
        if old and old.service != name:
            self.worker_gone(identity)  # moving to another service
        w = self.workers.get(identity) or Worker(identity, name, credit)
        w.credit = credit  # 0 pauses it: it keeps its jobs, takes no new ones
        self.workers[identity] = w
        svc.workers[identity] = w
        svc.refresh(w)
        self._logs["ready"].log(logging.INFO, "worker ready for %s (credit %d), %d workers",
                                name, credit, len(svc.workers))
        self._dispatch(svc)

    def _register(self, name: str) -> Service:
        """A new registered service, taking over the requests already waiting for it."""
        if len(self.services) >= self.max_services:
            idle = next((s for s in self.services.values() if s.idle()), None)
            if idle is None:
                raise Refusal(ErrorCode.SERVICE_LIMIT,
                              f"the router already serves {len(self.services)} services, its "
                              f"limit: READY for {name!r} refused; use an existing service "
                              f"name or ask the operator")
            log.info("service %s forgotten (no workers, no requests) to register %s",
                     idle.name, name)
            del self.services[idle.name]
        svc = self.services[name] = Service(name)
        early = self.unregistered.pop(name, None)
        if early:
            self._unregistered_n -= len(early)
            svc.waiting.update(early)
        return svc

    def _on_request(self, identity: bytes, header: bytes, payload: bytes,
                    principal: Principal | None = None) -> None:
        try:
            rid, ttl_ms, service = parse_request(header)
        except Refusal as r:
            if len(header) >= ID_END:  # the id is readable: the client gets its answer
                self._send(identity, P.encode_reply(r.msg_id, r.code), r.text.encode())
            raise
        self.counters["requests"] += 1
        if principal is not None and not principal.allows(Action.REQUEST, service):
            self.counters["forbidden"] += 1
            self._send(identity, P.encode_reply(rid, ErrorCode.FORBIDDEN),
                       f"your credentials do not allow requesting {service!r} (see "
                       f"'request' of principal {principal.name!r})".encode())
            return
        if service in self.builtins:
            self._answer_builtin(identity, rid, service, payload, principal)
            return
        svc = self.services.get(service)
        if svc is not None and len(svc.waiting) >= self.max_waiting:
            self._refuse_request(identity, rid, ErrorCode.QUEUE_FULL,
                                 f"{len(svc.waiting)} requests already wait for a {service} "
                                 f"worker: retry later")
            return
        if svc is None and self._unregistered_n >= self.max_unregistered:
            self._refuse_request(identity, rid, ErrorCode.NO_SERVICE,
                                 f"no worker has said READY for {service!r}, and "
                                 f"{self._unregistered_n} requests already wait for services "
                                 f"no worker registered: check the service name")
            return
        if self._held_bytes + len(payload) > MAX_HELD_BYTES:
            self._refuse_request(identity, rid, ErrorCode.QUEUE_FULL,
                                 "the broker holds its limit of request bytes: retry later")
            return
        mine = self._by_client.setdefault(identity, set())
        if len(mine) >= self.max_per_client:
            self._refuse_request(identity, rid, ErrorCode.QUEUE_FULL,
                                 f"this connection already has {len(mine)} requests waiting "
                                 f"or being served (at most {self.max_per_client}): wait for "
                                 f"replies, then retry")
            return
        deadline = time.monotonic() + (ttl_ms or self.max_wait_ms) / 1000
        job = Job(next(self._ids), identity, rid, service, payload, deadline)
        self.jobs[job.job_id] = job
        mine.add(job.job_id)
        self._held_bytes += len(payload)
        heapq.heappush(self._deadlines, (deadline, job.job_id))
        if svc is None:  # a worker may register it later; until then it waits, bounded
            self.unregistered.setdefault(service, OrderedDict())[job.job_id] = job
            self._unregistered_n += 1
            return
        svc.waiting[job.job_id] = job
        self._dispatch(svc)

    def _refuse_request(self, identity: bytes, rid: int, code: ErrorCode, why: str) -> None:
        key = "queue_full" if code == ErrorCode.QUEUE_FULL else "no_service"
        self.counters[key] += 1
        self._send(identity, P.encode_reply(rid, code), why.encode())

    def _on_reply(self, identity: bytes, header: bytes, payload: bytes) -> None:
        job_id, status = parse_reply(header)
        w = self.workers.get(identity)
        job = self.jobs.get(job_id)
        if w is not None and job is None and job_id in w.jobs:
            self._late_reply(w, job_id)
            return
        if w is None or job is None or job.worker != identity:
            self._reply_without_job(identity, job_id, w)
        self._forget(job)
        try:
            code = ErrorCode(status)
        except ValueError:
            # Not the client's fault: the worker answered with a status §8 does not define.
            code = ErrorCode.WORKER_FAILED
            self._error(identity, ErrorCode.MALFORMED,
                        f"REPLY status {status} is not an error code (PROTOCOL.md §8); the "
                        f"client got WORKER_FAILED", job_id)
        self.counters["replies"] += 1
        self._observe(time.monotonic() - job.started)
        self._send(job.client, P.encode_reply(job.request_id, code), payload)
        self._dispatch(self.services[w.service])

    def _late_reply(self, w: Worker, job_id: int) -> None:
        """The worker answered a job whose TTL passed while it held it (the client got
        EXPIRED): tell it, then use the credit that is free again."""
        w.jobs.discard(job_id)
        self._refresh(w)
        self.counters["late_replies"] += 1
        self._error(w.identity, ErrorCode.EXPIRED,
                    f"job {job_id} expired before this REPLY (its TTL passed); the client "
                    f"got EXPIRED and the reply was dropped", job_id)
        self._dispatch(self.services[w.service])

    def _reply_without_job(self, identity: bytes, job_id: int, w: Worker | None) -> None:
        """Refuse a REPLY for a job this connection does not hold (always raises)."""
        role = self._not_workers.get(identity)
        if role is not None:
            raise Refusal(ErrorCode.BAD_ROLE,
                          f"REPLY is sent by workers (role 4) to answer a REQUEST the router "
                          f"handed them; this connection said HELLO with role "
                          f"{role_name(role)}", job_id)
        self.counters["late_replies"] += 1
        if w is None:
            raise Refusal(ErrorCode.UNKNOWN_JOB,
                          f"REPLY for job {job_id}, but this connection holds no jobs: it has "
                          f"not said READY since its HELLO; the reply was dropped", job_id)
        raise Refusal(ErrorCode.UNKNOWN_JOB,
                      f"REPLY for job {job_id}, which this worker does not hold: it expired, "
                      f"was given to another worker, or was never handed out; the reply was "
                      f"dropped", job_id)

    def _answer_builtin(self, identity: bytes, rid: int, service: str, payload: bytes,
                        principal: Principal | None = None) -> None:
        try:
            body, code = self.builtins[service](payload, principal), ErrorCode.NONE
        except PermissionError as exc:  # beyond the principal's scope (router/trust.py)
            body, code = f"{service}: {exc}".encode(), ErrorCode.FORBIDDEN
        except ValueError as exc:  # the query itself is wrong (bad JSON, bad order id)
            log.info("%s request refused: %s", service, exc)
            body, code = f"{service}: {exc}".encode(), ErrorCode.MALFORMED
        except Exception as exc:  # our fault, not the client's; the router keeps going
            log.exception("%s request failed", service)
            body = f"{service} failed: {type(exc).__name__}: {exc}".encode()
            code = ErrorCode.WORKER_FAILED
        self.counters["replies"] += 1
        self._send(identity, P.encode_reply(rid, code), body)

    # ---- workers coming and going ---------------------------------------------------------

    def worker_gone(self, identity: bytes) -> None:
        """A worker disconnected: its jobs go back to the front of the queue."""
        w = self.workers.pop(identity, None)
        if w is None:
            return
        svc = self.services[w.service]
        svc.remove(identity)
        for job_id in sorted(w.jobs, reverse=True):
            job = self.jobs.get(job_id)
            if job is None:
                continue
            job.worker = None
            self.counters["retried"] += 1
            if job.attempts >= MAX_ATTEMPTS:
                self._fail(job, ErrorCode.WORKER_FAILED, "its workers kept failing")
            else:
                svc.waiting[job_id] = job
                svc.waiting.move_to_end(job_id, last=False)
        self._logs["gone"].log(logging.WARNING, "worker for %s gone, %d jobs requeued, %d "
                               "workers left", w.service, len(w.jobs), len(svc.workers))
        self._dispatch(svc)

    def reap(self, alive: Callable[[bytes], bool], budget: int = REAP_PER_TICK) -> int:
        """Check up to ``budget`` workers (round-robin over ticks) against ``alive``
        (the core's view of its connections) and drop the ones that are gone: the
        backstop for a disconnect the broker never heard of. Returns how many went."""
        if not self.workers:
            return 0
        if self._reap_order is None or not self._reap_order:
            self._reap_order = list(self.workers)
        batch, self._reap_order = self._reap_order[:budget], self._reap_order[budget:]
        gone = [ident for ident in batch if ident in self.workers and not alive(ident)]
        for ident in gone:
            self.worker_gone(ident)
        self.counters["reaped"] += len(gone)
        return len(gone)

    def tick(self) -> None:
        """Expire requests whose TTL passed (waiting or in progress); forget the error
        windows that are over."""
        for limited in self._logs.values():
            limited.flush()
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, job_id = heapq.heappop(self._deadlines)
            job = self.jobs.get(job_id)
            if job is None:
                continue  # answered already
            code = ErrorCode.NO_SERVICE if job.worker is None and job.attempts == 0 \
                else ErrorCode.EXPIRED
            # A worker still working on it keeps the credit until it answers (late): it
            # is busy, and handing it more would exceed the credit it asked for.
            self._fail(job, code, "no reply before the request's TTL", release_worker=False)
        if len(self._deadlines) > 2 * len(self.jobs) + 1024:
            # answered requests with long TTLs leave entries behind: keep the heap small
            self._deadlines = [(j.deadline, j.job_id) for j in self.jobs.values()]
            heapq.heapify(self._deadlines)
        self._limiter.prune(now)

    # ---- output ----------------------------------------------------------------------

    def _dispatch(self, svc: Service) -> None:
        while svc.waiting:
            w = svc.pick()
            if w is None:
                return
            _, job = svc.waiting.popitem(last=False)
            job.worker = w.identity
            job.attempts += 1
            w.jobs.add(job.job_id)
            svc.refresh(w)
            ttl = max(int((job.deadline - time.monotonic()) * 1000), 1)
            if not self._send(w.identity, P.encode_request(svc.name, job.job_id, ttl),
                              job.payload):
                self.worker_gone(w.identity)
                return

    def _forget(self, job: Job, release_worker: bool = True) -> None:
        """Drop a job from every table that holds it (but the credit it takes at its
        worker, unless ``release_worker``)."""
        self.jobs.pop(job.job_id, None)
        self._held_bytes -= len(job.payload)
        mine = self._by_client.get(job.client)
        if mine is not None:
            mine.discard(job.job_id)
            if not mine:
                del self._by_client[job.client]
        if job.worker is not None:
            w = self.workers.get(job.worker)
            if w is not None and release_worker:
                w.jobs.discard(job.job_id)
                self._refresh(w)
            return
        svc = self.services.get(job.service)
        if svc is not None and svc.waiting.pop(job.job_id, None) is not None:
            return
        early = self.unregistered.get(job.service)
        if early is not None and early.pop(job.job_id, None) is not None:
            self._unregistered_n -= 1
            if not early:
                del self.unregistered[job.service]

    def _refresh(self, w: Worker) -> None:
        svc = self.services.get(w.service)
        if svc is not None:
            svc.refresh(w)

    def _fail(self, job: Job, code: ErrorCode, why: str, release_worker: bool = True) -> None:
        self._forget(job, release_worker)
        key = {ErrorCode.NO_SERVICE: "no_service", ErrorCode.EXPIRED: "expired"}.get(code, "failed")
        self.counters[key] += 1
        self._send(job.client, P.encode_reply(job.request_id, code),
                   f"request for {job.service} failed: {why}".encode())

    def _error(self, identity: bytes, code: ErrorCode, text: str, msg_id: int = 0) -> None:
        """Send an ERROR, counted always and sent within the per-peer rate limit."""
        self.errors[int(code)] = self.errors.get(int(code), 0) + 1
        verdict, n = self._limiter.admit(identity, time.monotonic())
        if verdict == ErrorLimiter.SUPPRESS:
            self.errors_suppressed += 1
            return
        if verdict == ErrorLimiter.NOTICE:
            self.errors_rate_limited += 1
            code, msg_id = ErrorCode.RATE_LIMITED, 0
            text = "too many bad requests: further errors this second are not reported"
        elif n == 1:  # one log line per peer per second at most, as the core logs
            self._logs["refused"].log(logging.WARNING, "refused service command from %s: %s: %s",
                                      identity.hex(), code.name, text)
        self._send(identity, P.prefix(Command.ERROR) + P.ERROR.pack(code, msg_id), text.encode())

    def _send(self, identity: bytes, header: bytes, payload: bytes) -> bool:
        """False when not sent: the peer is gone or its pipe is full."""
        return self._send_fn(identity, header, payload)

    def _observe(self, seconds: float) -> None:
        i = 0
        while i < len(LATENCY_BOUNDS) and seconds > LATENCY_BOUNDS[i]:
            i += 1
        self.latency_buckets[i] += 1
        self.latency_sum += seconds

    def stats(self) -> dict:
        """Counters, errors by code, the request latency histogram and, for every
        registered service, its workers, waiting requests, requests being served
        ("busy") and the free credit of its workers ("credit")."""
        return {**self.counters, "jobs": len(self.jobs),
                "errors": dict(self.errors), "errors_suppressed": self.errors_suppressed,
                "errors_rate_limited": self.errors_rate_limited,
                "unregistered_waiting": self._unregistered_n,
                "service_limit": self.max_services,
                "latency_buckets": list(self.latency_buckets),
                "latency_bounds": LATENCY_BOUNDS, "latency_sum": self.latency_sum,
                "services": {
            name: {"workers": len(s.workers), "waiting": len(s.waiting),
                   "busy": sum(len(w.jobs) for w in s.workers.values()),
                   "credit": sum(w.free for w in s.workers.values())}
            for name, s in self.services.items()}}
