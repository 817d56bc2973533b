"""Service broker: requests balanced over live workers (the Majordomo pattern).

A worker connects like any peer (HELLO, role WORKER), then says READY with a service
name and a credit (requests it takes in parallel). A client sends REQUEST(service,
request id, ttl); the broker picks the worker with free credit that has waited longest,
forwards the request under a broker-assigned job id, and routes the worker's REPLY back
under the client's request id. When a worker dies (heartbeat timeout, unreachable, BYE)
its jobs go to another worker; a request whose TTL passes before a reply gets a REPLY
with ``NO_SERVICE`` (never served) or ``EXPIRED``.

Service traffic is thousands of messages a second at most, so this lives in Python; the
native core hands it over (Core.drain_broker) and returns from its loop right away.
"""

from __future__ import annotations

import itertools
import logging
import struct
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable

import zmq

from . import protocol as P
from .protocol import Command, ErrorCode

log = logging.getLogger("router.broker")

#: Times a request is handed to a worker before it fails with WORKER_FAILED.
MAX_ATTEMPTS = 3
#: Upper bounds (seconds) of the request-to-reply histogram.
LATENCY_BOUNDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


@dataclass
class Job:
    """One client request, from arrival until its reply (or failure)."""

    job_id: int
    client: bytes
    request_id: int
    service: str
    payload: bytes
    deadline: float  # monotonic; inf when no TTL
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


class Service:
    """Workers of one service name and the requests waiting for one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.workers: OrderedDict[bytes, Worker] = OrderedDict()  # longest-waiting first
        self.waiting: deque[Job] = deque()

    def pick(self) -> Worker | None:
        """The worker with free credit that has waited longest; it moves to the back."""
        for ident, w in self.workers.items():
            if len(w.jobs) < w.credit:
                self.workers.move_to_end(ident)
                return w
        return None


class Broker:
    """Routes REQUEST/REPLY between clients and service workers over the router socket."""

    def __init__(self, socket: zmq.Socket,
                 builtins: dict[str, Callable[[bytes], bytes]] | None = None) -> None:
        self.socket = socket
        #: Services the router answers itself (``router.history``, ``router.presence``).
        self.builtins = builtins or {}
        self.services: dict[str, Service] = {}
        self.workers: dict[bytes, Worker] = {}
        self.jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self.counters = {"requests": 0, "replies": 0, "retried": 0, "expired": 0,
                         "no_service": 0, "failed": 0}
        self.latency_buckets = [0] * (len(LATENCY_BOUNDS) + 1)  # request -> reply
        self.latency_sum = 0.0

    # ---- input -------------------------------------------------------------------------

    def handle(self, identity: bytes, header: bytes, payload: bytes) -> None:
        """One READY/REQUEST/REPLY from the core."""
        try:
            command, _ = P.check_prefix(header)
            if command == Command.READY:
                self._on_ready(identity, header)
            elif command == Command.REQUEST:
                self._on_request(identity, header, payload)
            elif command == Command.REPLY:
                self._on_reply(identity, header, payload)
        except (P.ProtocolError, ValueError, IndexError, struct.error) as exc:
            # struct.error: a header too short for its fixed fields (found by fuzzing)
            code = exc.code if isinstance(exc, P.ProtocolError) else ErrorCode.MALFORMED
            self._error(identity, code, f"bad service command: {exc}")

    def _on_ready(self, identity: bytes, header: bytes) -> None:
        credit, ln = P.READY.unpack_from(header, P.PREFIX.size)
        end = P.PREFIX.size + P.READY.size + ln
        if ln == 0 or len(header) != end or credit == 0:
            raise P.ProtocolError(ErrorCode.MALFORMED, "READY needs credit >= 1 and a service")
        name = header[P.PREFIX.size + P.READY.size:end].decode()
        old = self.workers.get(identity)
        if old and old.service != name:
            self.worker_gone(identity)
        svc = self.services.setdefault(name, Service(name))
        w = self.workers.get(identity) or Worker(identity, name, credit)
        w.credit = credit
        self.workers[identity] = w
        svc.workers[identity] = w
        log.info("worker ready for %s (credit %d), %d workers", name, credit, len(svc.workers))
        self._dispatch(svc)

    def _on_request(self, identity: bytes, header: bytes, payload: bytes) -> None:
        rid, ttl_ms, service = P.decode_request(header)
        if service in self.builtins:
            self._answer_builtin(identity, rid, service, payload)
            return
        deadline = time.monotonic() + ttl_ms / 1000 if ttl_ms else float("inf")
        job = Job(next(self._ids), identity, rid, service, payload, deadline)
        self.jobs[job.job_id] = job
        self.counters["requests"] += 1
        svc = self.services.setdefault(service, Service(service))
        svc.waiting.append(job)
        self._dispatch(svc)

    def _on_reply(self, identity: bytes, header: bytes, payload: bytes) -> None:
        job_id, code = P.decode_reply(header)
        job = self.jobs.pop(job_id, None)
        w = self.workers.get(identity)
        if w:
            w.jobs.discard(job_id)
        if job is None or job.worker != identity:
            return  # a late reply for a job already retried elsewhere or expired
        self.counters["replies"] += 1
        self._observe(time.monotonic() - job.started)
        self._send(job.client, P.encode_reply(job.request_id, code), payload)
        if w:
            self._dispatch(self.services[w.service])

    def _answer_builtin(self, identity: bytes, rid: int, service: str, payload: bytes) -> None:
        self.counters["requests"] += 1
        try:
            body, code = self.builtins[service](payload), ErrorCode.NONE
        except Exception as exc:  # a bad query must not take the router down
            log.warning("%s request failed: %s", service, exc)
            body, code = f"{service}: {exc}".encode(), ErrorCode.MALFORMED
        self.counters["replies"] += 1
        self._send(identity, P.encode_reply(rid, code), body)

    # ---- workers coming and going ---------------------------------------------------------

    def worker_gone(self, identity: bytes) -> None:
        """A worker disconnected: its jobs go back to the front of the queue."""
        w = self.workers.pop(identity, None)
        if w is None:
            return
        svc = self.services[w.service]
        svc.workers.pop(identity, None)
        for job_id in sorted(w.jobs, reverse=True):
            job = self.jobs.get(job_id)
            if job is None:
                continue
            job.worker = None
            self.counters["retried"] += 1
            if job.attempts >= MAX_ATTEMPTS:
                self._fail(job, ErrorCode.WORKER_FAILED, "its workers kept failing")
            else:
                svc.waiting.appendleft(job)
        log.warning("worker for %s gone, %d jobs requeued, %d workers left",
                    w.service, len(w.jobs), len(svc.workers))
        self._dispatch(svc)

    def tick(self) -> None:
        """Expire requests whose TTL passed (waiting or in progress)."""
        now = time.monotonic()
        for job in [j for j in self.jobs.values() if j.deadline <= now]:
            code = ErrorCode.NO_SERVICE if job.worker is None and job.attempts == 0 \
                else ErrorCode.EXPIRED
            self._fail(job, code, "no reply before the request's TTL")

    # ---- output ----------------------------------------------------------------------

    def _dispatch(self, svc: Service) -> None:
        while svc.waiting:
            job = svc.waiting[0]
            if job.job_id not in self.jobs:  # expired while waiting
                svc.waiting.popleft()
                continue
            w = svc.pick()
            if w is None:
                return
            svc.waiting.popleft()
            job.worker = w.identity
            job.attempts += 1
            w.jobs.add(job.job_id)
            ttl = 0 if job.deadline == float("inf") else max(
                int((job.deadline - time.monotonic()) * 1000), 1)
            if not self._send(w.identity, P.encode_request(svc.name, job.job_id, ttl),
                              job.payload):
                self.worker_gone(w.identity)
                return

    def _fail(self, job: Job, code: ErrorCode, why: str) -> None:
        self.jobs.pop(job.job_id, None)
        if job.worker and job.worker in self.workers:
            self.workers[job.worker].jobs.discard(job.job_id)
        key = {ErrorCode.NO_SERVICE: "no_service", ErrorCode.EXPIRED: "expired"}.get(code, "failed")
        self.counters[key] += 1
        self._send(job.client, P.encode_reply(job.request_id, code),
                   f"request for {job.service} failed: {why}".encode())

    def _error(self, identity: bytes, code: ErrorCode, text: str) -> None:
        self._send(identity, P.prefix(Command.ERROR) + P.ERROR.pack(code, 0), text.encode())

    def _send(self, identity: bytes, header: bytes, payload: bytes) -> bool:
        try:
            self.socket.send_multipart([identity, header, payload], zmq.DONTWAIT)
            return True
        except zmq.ZMQError:  # unreachable (gone) or its pipe is full
            return False

    def _observe(self, seconds: float) -> None:
        i = 0
        while i < len(LATENCY_BOUNDS) and seconds > LATENCY_BOUNDS[i]:
            i += 1
        self.latency_buckets[i] += 1
        self.latency_sum += seconds

    def stats(self) -> dict:
        """Counters, the request latency histogram and the shape of every service."""
        return {**self.counters, "jobs": len(self.jobs),
                "latency_buckets": list(self.latency_buckets),
                "latency_bounds": LATENCY_BOUNDS, "latency_sum": self.latency_sum,
                "services": {
            name: {"workers": len(s.workers), "waiting": len(s.waiting),
                   "busy": sum(len(w.jobs) for w in s.workers.values())}
            for name, s in self.services.items()}}
