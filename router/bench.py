"""`router bench`: load a running router through this SDK and report what a user gets.

    router bench pub      --router tcp://127.0.0.1:5555 --count 200000 --size 200
    router bench reliable --publishers 2 --receivers 2 --duration 10 --rate 20000
    router bench request  --receivers 2 --window 32
    router bench sub      --tag run1            # receivers only, for a `pub --receivers 0`

The command starts its own client processes (multiprocessing, one SDK client each):
``--publishers`` senders and ``--receivers`` endpoints (in ``request`` mode, service
workers). Each publisher sends to every receiver's address in turn. A payload carries
its send time (CLOCK_MONOTONIC ns) and its index, so latency is receive time minus send
time, measured on this machine.

Modes:
  pub       best effort (NOTICE): sent, delivered, lost (best effort may be dropped)
  reliable  ORDER: every message is acked by its receiver and the publisher waits for
            its DELIVERED receipt (at most --window unconfirmed per publisher)
  request   request/reply through --receivers service workers (workers.service
            ServiceWorker, echoing the payload); latency is the round trip
  sub       receivers only, for a `pub`/`reliable` run elsewhere with the same --tag and
            --receivers 0 (which sends to bench:<tag>.0: run sub with --receivers 1);
            stops after --count messages, --duration seconds from the first, or Ctrl-C

The client loops hand messages to the SDK and take them from it in batches
(``send_many`` and ``recv_many`` in ``_send_batch``, ``_asend_batch`` and ``_take``),
and wait for DELIVERED receipts in one place (``_settle``, ``_asettle``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing as mp
import os
import queue
import signal
import struct
import sys
import time
from array import array
from typing import Callable

#: Payload head: send time (CLOCK_MONOTONIC ns), publisher number, message index.
HEAD = struct.Struct("<qII")
MIN_SIZE = HEAD.size
MODES = ("pub", "reliable", "request", "sub")
#: Messages a loop hands to the SDK before it looks at the clock.
BATCH = 64
#: Deliveries a receiver takes from the SDK at once.
RECV_BATCH = 1000
#: The service the bench's workers serve in request mode.
SERVICE = "bench.echo"
#: Entry point through which request mode finds its service worker class: router/ does
#: not import the application (workers/); pyproject.toml points this at ServiceWorker.
WORKER_GROUP = "order_router.bench"
#: Seconds the clients get to report their figures after Ctrl-C.
STOP_GRACE = 5.0
#: Requests a bench worker takes at once (READY credit).
WORKER_CREDIT = 8
#: Default --window: unconfirmed reliable messages, or outstanding requests, per publisher.
WINDOW = {"reliable": 1000, "request": 32}


class BenchError(Exception):
    """A run that cannot go on (a client could not connect, a process died): one line."""


@dataclasses.dataclass
class Plan:
    """Everything a run's processes need (pickled to each of them)."""

    mode: str
    url: str
    size: int = 200
    count: int = 100_000
    duration: float = 0.0
    rate: float = 0.0
    publishers: int = 1
    receivers: int = 1
    window: int = 0  # 0: WINDOW[mode]
    api: str = "blocking"
    tag: str = ""
    idle: float = 2.0
    timeout: float = 5.0
    service: str = SERVICE

    def __post_init__(self) -> None:
        self.window = self.window or WINDOW.get(self.mode, 1000)

    @property
    def reliable(self) -> bool:
        return self.mode == "reliable"

    def address(self, r: int) -> str:
        """Receiver ``r``'s address; the tag keeps a run from reading an earlier run's
        leftovers (a reliable message waits in the journal for its address)."""
        return f"bench:{self.tag}.{r}"

    def share(self, p: int) -> int:
        """Messages publisher ``p`` sends in a count run."""
        return self.count // self.publishers + (1 if p < self.count % self.publishers else 0)

    def targets(self) -> list[str]:
        return [self.address(r) for r in range(max(self.receivers, 1))]


def payload(size: int, pub: int, i: int, pad: bytes) -> bytes:
    """A bench message: HEAD (now, publisher, index) then ``size - HEAD.size`` bytes."""
    return HEAD.pack(time.monotonic_ns(), pub, i & 0xFFFFFFFF) + pad


# ---------------------------------------------------------------------------------------
# Control: how a client process hears "go", reports progress and learns when to stop.
# router bench uses shared memory (Control); the benchmarks' drivers give their own.


class Control:
    """A run's shared state between the parent and its client processes."""

    def __init__(self, ctx, n_slots: int) -> None:
        self.go_event = ctx.Event()
        self.done = ctx.Event()          # publishers finished: expected counts are final
        self.release = ctx.Event()       # receivers finished: publishers may disconnect
        self.stop_event = ctx.Event()    # Ctrl-C or a failure: everyone stops
        self.counts = ctx.RawArray("q", n_slots)     # progress per process
        self.expected = ctx.RawArray("q", n_slots)   # per receiver, once done is set
        self.results = ctx.Queue()
        self.t0 = ctx.RawValue("q", 0)

    def wait_go(self) -> int:
        while not self.go_event.wait(0.5):
            if self.stop_event.is_set():
                raise BenchError("stopped before go")
        return self.t0.value

    def tick(self, slot: int, n: int) -> None:
        self.counts[slot] = n

    def expected_for(self, r: int) -> int | None:
        return self.expected[r] if self.done.is_set() else None

    def stopped(self) -> bool:
        return self.stop_event.is_set()

    def released(self) -> bool:
        return self.release.is_set() or self.stop_event.is_set()


class Pacer:
    """Open loop pacing: message i is due at t0 + i / rate (0: no pacing); a late sender
    catches up, so a stall shows in the latency tail instead of being skipped."""

    def __init__(self, rate: float, t0_ns: int) -> None:
        self.rate = rate
        self.t0 = t0_ns / 1e9

    def allowed(self, sent: int, now: float) -> int:
        """How many more messages may go now (BATCH at most)."""
        if not self.rate:
            return BATCH
        return max(0, min(BATCH, int((now - self.t0) * self.rate) + 1 - sent))

    def wait(self, sent: int, now: float) -> float:
        """Seconds until message ``sent`` is due."""
        return max(0.0, self.t0 + sent / self.rate - now) if self.rate else 0.0


def _ends(plan: Plan, p: int, started: float) -> Callable[[int], bool]:
    """A publisher's "finished" test: its share sent, or --duration passed."""
    if plan.duration:
        end = started + plan.duration
        return lambda sent: time.monotonic() >= end
    share = plan.share(p)
    return lambda sent: sent >= share


# ---------------------------------------------------------------------------------------
# Blocking clients


def _batch(targets: list[str], plan: Plan, p: int, first: int, n: int, pad: bytes,
           per_target: list[int]) -> list[tuple[str, bytes]]:
    """Messages first..first+n-1 as (target, payload), round robin over the targets."""
    nt = len(targets)
    out = []
    for i in range(first, first + n):
        out.append((targets[i % nt], payload(plan.size, p, i, pad)))
        per_target[i % nt] += 1
    return out


def _send_batch(sender, targets: list[str], plan: Plan, p: int, first: int, n: int,
                pad: bytes, msg_class, per_target: list[int]) -> None:
    """Send messages first..first+n-1 round robin over the targets."""
    sender.send_many(_batch(targets, plan, p, first, n, pad, per_target), msg_class=msg_class)


def _settle(sender, state: dict, ctl, timeout: float) -> None:
    """Wait for every unconfirmed message's final receipt (DELIVERED, which ``flush``
    does not wait for: it stops at ACCEPTED), or ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while state["inflight"] > 0 and time.monotonic() < deadline and not ctl.stopped():
        sender.poll(0.01)


def _take(endpoint, timeout: float) -> list:
    """The deliveries waiting at the endpoint (RECV_BATCH at most), or the first batch
    to come within ``timeout`` s."""
    return endpoint.recv_many(RECV_BATCH, timeout)


def run_publisher(plan: Plan, p: int, ctl, slot: int) -> dict:
    """One blocking publisher: connect, wait for go, send, wait for receipts, hold."""
    from .client import Sender
    from .protocol import MsgClass, Status

    final = {Status.DELIVERED, Status.EXPIRED, Status.REFUSED, Status.FAILED}
    state = {"inflight": 0, "errors": 0}
    receipts: dict[str, int] = {}

    def on_receipt(r) -> None:
        receipts[r.status.name] = receipts.get(r.status.name, 0) + 1
        if r.status in final:
            state["inflight"] -= 1

    def on_error(err) -> None:
        state["errors"] += 1

    msg_class = MsgClass.ORDER if plan.reliable else MsgClass.NOTICE
    sender = Sender(plan.url, f"bench-pub-{plan.tag}-{p}", timeout=plan.timeout,
                    compress_above=-1, on_receipt=on_receipt, on_error=on_error)
    try:
        targets = plan.targets()
        per_target = [0] * len(targets)
        pad = bytes(plan.size - HEAD.size)
        ctl_ready(ctl, slot)
        t0 = ctl.wait_go()
        pacer = Pacer(plan.rate / plan.publishers, t0)
        cpu0, first_ns = time.process_time(), time.monotonic_ns()
        finished = _ends(plan, p, first_ns / 1e9)
        share = plan.share(p) if not plan.duration else 1 << 62
        sent = 0
        while not finished(sent) and not ctl.stopped():
            now = time.monotonic()
            n = min(pacer.allowed(sent, now), share - sent)
            if plan.reliable:
                n = min(n, plan.window - state["inflight"])
            if n > 0:
                _send_batch(sender, targets, plan, p, sent, n, pad, msg_class, per_target)
                sent += n
                if plan.reliable:
                    state["inflight"] += n
                sender.poll(0)
                ctl.tick(slot, sent)
                continue
            wait = pacer.wait(sent, now)
            if plan.reliable and state["inflight"] >= plan.window:
                sender.poll(0.001)  # receipts free the window
            elif wait >= 0.002:
                sender.poll(wait - 0.001)
            elif wait > 0:
                time.sleep(wait)
        last_ns = time.monotonic_ns()
        ctl.tick(slot, sent)
        if plan.reliable:
            _settle(sender, state, ctl, max(plan.timeout, 10.0))
        confirmed_ns = time.monotonic_ns()
        cpu = time.process_time() - cpu0
        result = {"role": "publisher", "slot": slot, "sent": sent, "per_target": per_target,
                  "t_first_ns": first_ns, "t_last_ns": last_ns, "t_confirmed_ns": confirmed_ns,
                  "cpu_s": cpu, "receipts": receipts, "unconfirmed": max(0, state["inflight"])
                  if plan.reliable else 0, "errors": state["errors"]}
        ctl_sent(ctl, slot, result)
        # Stay connected until the receivers are done: what libzmq still queues would
        # be dropped by a close now.
        while not ctl.released():
            sender.poll(0.05)
        return result
    finally:
        sender.close()


def run_receiver(plan: Plan, r: int, ctl, slot: int) -> dict:
    """One blocking receiver: bind its address, count, time and ack what arrives."""
    from .client import Endpoint

    errors = [0]
    ep = Endpoint(plan.url, [plan.address(r)], name=f"bench-recv-{plan.tag}-{r}",
                  timeout=plan.timeout, on_error=lambda e: errors.__setitem__(0, errors[0] + 1))
    try:
        tally = Tally()
        ctl_ready(ctl, slot)
        ctl.wait_go()
        tally.idle_since = time.monotonic()
        cpu0, looked = time.process_time(), 0
        while not ctl.stopped():
            batch = _take(ep, 0.05)
            if batch:
                now = time.monotonic_ns()
                for d in batch:
                    tally.add(d.payload, now)
                if plan.mode in ("reliable", "sub"):
                    ep.ack(batch[-1])  # cumulative; a best-effort delivery needs none
                ctl.tick(slot, tally.received)
                if tally.received - looked < 256:  # look at the control now and then
                    continue
            looked = tally.received
            if tally.finished(ctl.expected_for(r), plan):
                break
        result = tally.result(slot, time.process_time() - cpu0)
        result["errors"] = errors[0]
        result["duplicates"] = ep.duplicates
        return result
    finally:
        ep.close()


class Tally:
    """What a receiver counts: messages, order per publisher, latencies."""

    def __init__(self) -> None:
        self.received = 0
        self.reordered = 0
        self.last: dict[int, int] = {}
        self.lat = array("q")
        self.t_first_ns = 0
        self.t_last_ns = 0
        self.idle_since = time.monotonic()

    def add(self, data: bytes, now_ns: int) -> None:
        sent_ns, pub, i = HEAD.unpack_from(data)
        self.lat.append(now_ns - sent_ns)
        if i < self.last.get(pub, -1):
            self.reordered += 1
        self.last[pub] = i
        self.received += 1
        if not self.t_first_ns:
            self.t_first_ns = now_ns
        self.t_last_ns = now_ns

    def finished(self, expected: int | None, plan: Plan) -> bool:
        """All expected messages are in, or (publishers done) nothing came for --idle s."""
        if self.t_last_ns:
            self.idle_since = max(self.idle_since, self.t_last_ns / 1e9)
        if expected is None:
            return plan.mode == "sub" and self._sub_done(plan)
        if self.received >= expected:
            return True
        return time.monotonic() - self.idle_since >= plan.idle

    def _sub_done(self, plan: Plan) -> bool:
        if plan.duration:
            return bool(self.t_first_ns) and time.monotonic() - self.t_first_ns / 1e9 >= plan.duration
        return self.received >= plan.count

    def result(self, slot: int, cpu_s: float) -> dict:
        return {"role": "receiver", "slot": slot, "received": self.received,
                "reordered": self.reordered, "t_first_ns": self.t_first_ns,
                "t_last_ns": self.t_last_ns, "cpu_s": cpu_s, "lat": self.lat.tobytes()}


def run_requester(plan: Plan, p: int, ctl, slot: int) -> dict:
    """One blocking requester: up to --window requests outstanding, round trip timed."""
    from .client import Sender
    from .protocol import ErrorCode

    outstanding: dict[int, int] = {}
    lat, failed = array("q"), {}
    counts = {"answered": 0, "t_last": 0}

    def on_reply(reply) -> None:
        t = time.monotonic_ns()
        sent_ns = outstanding.pop(reply.request_id, None)
        if sent_ns is None:
            return
        counts["t_last"] = t
        lat.append(t - sent_ns)
        if reply.code == ErrorCode.NONE:
            counts["answered"] += 1
        else:
            failed[reply.code.name] = failed.get(reply.code.name, 0) + 1

    sender = Sender(plan.url, f"bench-req-{plan.tag}-{p}", timeout=plan.timeout,
                    compress_above=-1, on_reply=on_reply)
    try:
        pad = bytes(plan.size - HEAD.size)
        ctl_ready(ctl, slot)
        t0 = ctl.wait_go()
        pacer = Pacer(plan.rate / plan.publishers, t0)
        cpu0, first_ns = time.process_time(), time.monotonic_ns()
        finished = _ends(plan, p, first_ns / 1e9)
        share = plan.share(p) if not plan.duration else 1 << 62
        ttl = int(max(plan.timeout, 1.0) * 1000)
        deadline = None
        sent = 0
        while not ctl.stopped():
            done_sending = finished(sent)
            if done_sending:
                if not outstanding:
                    break
                deadline = deadline or time.monotonic() + ttl / 1000 + 1
                if time.monotonic() > deadline:
                    break
            now = time.monotonic()
            n = 0 if done_sending else min(pacer.allowed(sent, now), share - sent,
                                           plan.window - len(outstanding))
            for i in range(sent, sent + n):
                t = time.monotonic_ns()
                outstanding[sender.submit(plan.service, payload(plan.size, p, i, pad),
                                          ttl_ms=ttl)] = t
            sent += n
            sender.poll(0 if n else 0.001)  # replies go to on_reply
            ctl.tick(slot, sent)
        cpu = time.process_time() - cpu0
        result = {"role": "publisher", "slot": slot, "sent": sent,
                  "answered": counts["answered"], "failed": failed,
                  "unanswered": len(outstanding), "t_first_ns": first_ns,
                  "t_last_ns": counts["t_last"] or first_ns,
                  "t_confirmed_ns": counts["t_last"] or first_ns, "cpu_s": cpu,
                  "lat": lat.tobytes(), "per_target": [], "receipts": {}, "errors": 0}
        ctl_sent(ctl, slot, result)
        return result
    finally:
        sender.close()


def service_worker_class():
    """The service worker class request mode runs (entry point WORKER_GROUP "worker")."""
    from .cli import entry_points_of

    for ep in entry_points_of(WORKER_GROUP):
        if ep.name == "worker":
            return ep.load()
    raise BenchError(f"request mode needs a service worker: no 'worker' entry point in "
                     f"group {WORKER_GROUP}; `pip install -e .` in the project's checkout "
                     "registers workers.service:ServiceWorker")


def run_worker(plan: Plan, r: int, ctl, slot: int) -> dict:
    """One service worker (echo) for request mode; serves until the requesters finish."""
    worker_cls = service_worker_class()
    worker = worker_cls(plan.url, plan.service, lambda body: body, credit=WORKER_CREDIT,
                        name=f"bench-worker-{plan.tag}-{r}", timeout=plan.timeout)
    try:
        ctl_ready(ctl, slot)
        ctl.wait_go()
        cpu0 = time.process_time()
        while not ctl.done.is_set() and not ctl.stopped():
            worker.serve_once(0.05)
            ctl.tick(slot, worker.served)
        return {"role": "receiver", "slot": slot, "received": worker.served,
                "cpu_s": time.process_time() - cpu0, "reordered": 0, "t_first_ns": 0,
                "t_last_ns": 0}
    finally:
        worker.close()


# ---------------------------------------------------------------------------------------
# asyncio clients (the same loops over router.aio)


async def _asend_batch(sender, targets: list[str], plan: Plan, p: int, first: int, n: int,
                       pad: bytes, msg_class, per_target: list[int]) -> None:
    """:func:`_send_batch` for the AsyncSender."""
    await sender.send_many(_batch(targets, plan, p, first, n, pad, per_target),
                           msg_class=msg_class)


async def _asettle(state: dict, ctl, timeout: float) -> None:
    """:func:`_settle` for the AsyncSender, which takes receipts as they come."""
    deadline = time.monotonic() + timeout
    while state["inflight"] > 0 and time.monotonic() < deadline and not ctl.stopped():
        await asyncio.sleep(0.01)


async def _aio_publisher(plan: Plan, p: int, ctl, slot: int) -> dict:
    from .aio import AsyncSender
    from .protocol import MsgClass, Status

    final = {Status.DELIVERED, Status.EXPIRED, Status.REFUSED, Status.FAILED}
    state = {"inflight": 0, "errors": 0}
    receipts: dict[str, int] = {}
    freed = asyncio.Event()

    def on_receipt(r) -> None:
        receipts[r.status.name] = receipts.get(r.status.name, 0) + 1
        if r.status in final:
            state["inflight"] -= 1
            freed.set()

    msg_class = MsgClass.ORDER if plan.reliable else MsgClass.NOTICE
    sender = await AsyncSender.connect(
        plan.url, f"bench-apub-{plan.tag}-{p}", timeout=plan.timeout, compress_above=-1,
        on_receipt=on_receipt,
        on_error=lambda e: state.__setitem__("errors", state["errors"] + 1))
    try:
        targets = plan.targets()
        nt = len(targets)
        per_target = [0] * nt
        pad = bytes(plan.size - HEAD.size)
        ctl_ready(ctl, slot)
        t0 = await asyncio.to_thread(ctl.wait_go)
        pacer = Pacer(plan.rate / plan.publishers, t0)
        cpu0, first_ns = time.process_time(), time.monotonic_ns()
        finished = _ends(plan, p, first_ns / 1e9)
        share = plan.share(p) if not plan.duration else 1 << 62
        sent = 0
        while not finished(sent) and not ctl.stopped():
            now = time.monotonic()
            n = min(pacer.allowed(sent, now), share - sent)
            if plan.reliable:
                n = min(n, plan.window - state["inflight"])
            if n > 0:
                await _asend_batch(sender, targets, plan, p, sent, n, pad, msg_class,
                                   per_target)
                sent += n
                if plan.reliable:
                    state["inflight"] += n
                ctl.tick(slot, sent)
                await asyncio.sleep(0)  # let the reader take receipts
                continue
            if plan.reliable and state["inflight"] >= plan.window:
                freed.clear()
                try:
                    await asyncio.wait_for(freed.wait(), 0.01)
                except asyncio.TimeoutError:
                    pass
            else:
                await asyncio.sleep(pacer.wait(sent, now))
        last_ns = time.monotonic_ns()
        ctl.tick(slot, sent)
        if plan.reliable:
            await _asettle(state, ctl, max(plan.timeout, 10.0))
        confirmed_ns = time.monotonic_ns()
        cpu = time.process_time() - cpu0
        result = {"role": "publisher", "slot": slot, "sent": sent, "per_target": per_target,
                  "t_first_ns": first_ns, "t_last_ns": last_ns, "t_confirmed_ns": confirmed_ns,
                  "cpu_s": cpu, "receipts": receipts,
                  "unconfirmed": max(0, state["inflight"]) if plan.reliable else 0,
                  "errors": state["errors"]}
        ctl_sent(ctl, slot, result)
        while not ctl.released():
            await asyncio.sleep(0.05)
        return result
    finally:
        await sender.close()


async def _aio_receiver(plan: Plan, r: int, ctl, slot: int) -> dict:
    from .aio import AsyncEndpoint

    errors = [0]
    ep = await AsyncEndpoint.connect(plan.url, [plan.address(r)],
                                     name=f"bench-arecv-{plan.tag}-{r}", timeout=plan.timeout,
                                     on_error=lambda e: errors.__setitem__(0, errors[0] + 1))
    tally = Tally()
    try:
        ctl_ready(ctl, slot)
        await asyncio.to_thread(ctl.wait_go)
        tally.idle_since = time.monotonic()
        cpu0, looked = time.process_time(), 0
        while not ctl.stopped():
            batch = await ep.recv_many(RECV_BATCH, 0.05)
            if batch:
                now = time.monotonic_ns()
                for d in batch:
                    tally.add(d.payload, now)
                if plan.mode in ("reliable", "sub"):
                    ep.ack(batch[-1])  # cumulative
                ctl.tick(slot, tally.received)
                if tally.received - looked < 256:
                    continue
            looked = tally.received
            if tally.finished(ctl.expected_for(r), plan):
                break
        result = tally.result(slot, time.process_time() - cpu0)
        result["errors"] = errors[0]
        result["duplicates"] = ep.duplicates
        return result
    finally:
        await ep.close()


async def _aio_requester(plan: Plan, p: int, ctl, slot: int) -> dict:
    from .aio import AsyncSender
    from .protocol import ErrorCode

    sender = await AsyncSender.connect(plan.url, f"bench-areq-{plan.tag}-{p}",
                                       timeout=plan.timeout, compress_above=-1)
    try:
        pad = bytes(plan.size - HEAD.size)
        ctl_ready(ctl, slot)
        t0 = await asyncio.to_thread(ctl.wait_go)
        pacer = Pacer(plan.rate / plan.publishers, t0)
        cpu0, first_ns = time.process_time(), time.monotonic_ns()
        finished = _ends(plan, p, first_ns / 1e9)
        share = plan.share(p) if not plan.duration else 1 << 62
        ttl = int(max(plan.timeout, 1.0) * 1000)
        lat, failed = array("q"), {}
        counts = {"sent": 0, "answered": 0, "t_last": first_ns}

        async def one(i: int) -> None:
            t = time.monotonic_ns()
            reply = await sender.request(plan.service, payload(plan.size, p, i, pad),
                                         ttl_ms=ttl)
            counts["t_last"] = time.monotonic_ns()
            lat.append(counts["t_last"] - t)
            if reply.code == ErrorCode.NONE:
                counts["answered"] += 1
            else:
                failed[reply.code.name] = failed.get(reply.code.name, 0) + 1

        tasks: set[asyncio.Task] = set()
        while not ctl.stopped():
            sent = counts["sent"]
            if finished(sent):
                break
            now = time.monotonic()
            n = min(pacer.allowed(sent, now), share - sent, plan.window - len(tasks))
            for i in range(sent, sent + n):
                task = asyncio.create_task(one(i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            counts["sent"] += n
            ctl.tick(slot, counts["sent"])
            if n:
                await asyncio.sleep(0)
            elif tasks and len(tasks) >= plan.window:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(max(pacer.wait(sent, now), 0.0005))
        if tasks:
            await asyncio.wait(tasks, timeout=max(plan.timeout, 10.0) + 1)
        cpu = time.process_time() - cpu0
        result = {"role": "publisher", "slot": slot, "sent": counts["sent"],
                  "answered": counts["answered"], "failed": failed,
                  "unanswered": counts["sent"] - counts["answered"] - sum(failed.values()),
                  "t_first_ns": first_ns, "t_last_ns": counts["t_last"],
                  "t_confirmed_ns": counts["t_last"], "cpu_s": cpu, "lat": lat.tobytes(),
                  "per_target": [], "receipts": {}, "errors": 0}
        ctl_sent(ctl, slot, result)
        return result
    finally:
        await sender.close()


# ---------------------------------------------------------------------------------------
# One client process


def ctl_ready(ctl, slot: int) -> None:
    """Tell the parent this client is connected (WELCOME received)."""
    put = getattr(ctl, "ready", None)
    if put is not None:
        put(slot)
    else:
        ctl.results.put({"role": "ready", "slot": slot})


def ctl_sent(ctl, slot: int, result: dict) -> None:
    """Hand a publisher's figures to the parent before it holds its connection."""
    put = getattr(ctl, "sent", None)
    if put is not None:
        put(slot, result)
    else:
        ctl.results.put(result)


ROLES = {
    ("blocking", "publisher"): run_publisher,
    ("blocking", "receiver"): run_receiver,
    ("blocking", "requester"): run_requester,
    ("blocking", "worker"): run_worker,
    ("asyncio", "publisher"): lambda *a: asyncio.run(_aio_publisher(*a)),
    ("asyncio", "receiver"): lambda *a: asyncio.run(_aio_receiver(*a)),
    ("asyncio", "requester"): lambda *a: asyncio.run(_aio_requester(*a)),
    ("asyncio", "worker"): run_worker,
}


def client_role(plan: Plan, kind: str) -> Callable:
    """The loop of a publisher/receiver in ``plan``'s mode and API."""
    if plan.mode == "request":
        kind = {"publisher": "requester", "receiver": "worker"}[kind]
    return ROLES[(plan.api, kind)]


def _child(plan: Plan, kind: str, index: int, ctl: Control, slot: int) -> None:
    """A client process: run its loop and put its result (or its error) on the queue."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    try:
        result = client_role(plan, kind)(plan, index, ctl, slot)
        if kind != "publisher":  # a publisher handed its figures before it held on
            ctl.results.put(result)
        ctl.results.put({"role": "exit", "slot": slot})
    except BaseException as exc:  # reported as one line by the parent
        ctl.results.put({"role": "error", "slot": slot,
                         "error": f"{kind} {index}: {type(exc).__name__}: {exc}"})


# ---------------------------------------------------------------------------------------
# The parent: start, watch, report


def _percentiles(samples: array) -> dict:
    s = sorted(samples)
    if not s:
        return {"p50_us": None, "p99_us": None, "p999_us": None, "max_us": None}
    n = len(s)
    at = lambda q: s[min(n - 1, int(q * n))] / 1e3  # noqa: E731
    return {"p50_us": at(0.5), "p99_us": at(0.99), "p999_us": at(0.999), "max_us": s[-1] / 1e3}


def summarize(plan: Plan, pubs: list[dict], recvs: list[dict]) -> dict:
    """The run's figures from its clients' results."""
    sent = sum(p["sent"] for p in pubs)
    t0 = min((p["t_first_ns"] for p in pubs), default=0)
    lat = array("q")
    if plan.mode == "request":
        delivered = sum(p["answered"] for p in pubs)
        t_end = max((p["t_last_ns"] for p in pubs), default=t0)
        for p in pubs:
            lat.frombytes(p["lat"])
    else:
        delivered = sum(r["received"] for r in recvs)
        if not t0:  # sub mode: from the first receipt at a receiver
            t0 = min((r["t_first_ns"] for r in recvs if r["t_first_ns"]), default=0)
        t_end = max((r["t_last_ns"] for r in recvs), default=t0)
        for r in recvs:
            lat.frombytes(r["lat"])
    span = max(t_end - t0, 1) / 1e9 if t0 else 0.0
    out = {
        "mode": plan.mode, "api": plan.api, "publishers": len(pubs), "receivers": len(recvs),
        "size": plan.size, "sent": sent, "delivered": delivered,
        "lost": max(0, sent - delivered) if pubs and plan.receivers else 0,
        "span_s": span,
        "msg_s": delivered / span if span else 0.0,
        "mb_s": delivered * plan.size / span / 1e6 if span else 0.0,
        "sender_cpu_us": (sum(p["cpu_s"] for p in pubs) * 1e6 / sent) if sent else None,
        "receiver_cpu_us": (sum(r["cpu_s"] for r in recvs) * 1e6 / delivered)
        if delivered and recvs else None,
        "reordered": sum(r.get("reordered", 0) for r in recvs),
        "duplicates": sum(r.get("duplicates", 0) for r in recvs),
        "errors": sum(p.get("errors", 0) for p in pubs) + sum(r.get("errors", 0) for r in recvs),
        **_percentiles(lat),
    }
    if plan.reliable:
        receipts: dict[str, int] = {}
        for p in pubs:
            for k, v in p["receipts"].items():
                receipts[k] = receipts.get(k, 0) + v
        t_conf = max(p["t_confirmed_ns"] for p in pubs)
        out["receipts"] = receipts
        out["unconfirmed"] = sum(p["unconfirmed"] for p in pubs)
        out["confirmed_msg_s"] = receipts.get("DELIVERED", 0) / (max(t_conf - t0, 1) / 1e9)
    if plan.mode == "request":
        out["failed"] = {k: v for p in pubs for k, v in p["failed"].items()}
        out["unanswered"] = sum(p["unanswered"] for p in pubs)
    return out


def _fmt(v, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def table(s: dict) -> str:
    """The final table (plain text, one figure per line, stable labels)."""
    what = {"pub": "best effort (NOTICE)", "reliable": "reliable (ORDER), DELIVERED receipts",
            "request": "request/reply through service workers", "sub": "receivers only"}
    rows = [
        ("mode", f"{s['mode']}: {what[s['mode']]}, {s['api']} SDK"),
        ("clients", f"{s['publishers']} publisher(s) -> {s['receivers']} receiver(s)"),
        ("message size", f"{s['size']} B"),
        ("sent", _fmt(s["sent"])),
        ("delivered", _fmt(s["delivered"])),
        ("lost", _fmt(s["lost"])),
        ("delivered msg/s", _fmt(s["msg_s"])),
        ("delivered MB/s", _fmt(s["mb_s"], ",.2f")),
        ("sender CPU us/msg", _fmt(s["sender_cpu_us"], ",.1f")),
        ("receiver CPU us/msg", _fmt(s["receiver_cpu_us"], ",.1f")),
        ("latency p50 us", _fmt(s["p50_us"])),
        ("latency p99 us", _fmt(s["p99_us"])),
        ("latency p99.9 us", _fmt(s["p999_us"])),
        ("latency max us", _fmt(s["max_us"])),
    ]
    if "receipts" in s:
        rows.append(("receipts", " ".join(f"{k}={v:,}" for k, v in sorted(s["receipts"].items()))
                     or "none"))
        rows.append(("confirmed msg/s", _fmt(s["confirmed_msg_s"])))
        rows.append(("unconfirmed", _fmt(s["unconfirmed"])))
    if "failed" in s:
        rows.append(("failed replies", " ".join(f"{k}={v}" for k, v in s["failed"].items())
                     or "0"))
        rows.append(("unanswered", _fmt(s["unanswered"])))
    rows += [("reordered", _fmt(s["reordered"])), ("duplicates dropped", _fmt(s["duplicates"])),
             ("router errors", _fmt(s["errors"]))]
    if s.get("interrupted"):
        rows.append(("interrupted", "yes: stopped by Ctrl-C, figures up to then"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


class Run:
    """A `router bench` run: client processes, progress, results."""

    def __init__(self, plan: Plan, progress=sys.stderr) -> None:
        self.plan = plan
        self.progress = progress
        self.mp = mp.get_context("spawn")
        self.n_pub = 0 if plan.mode == "sub" else plan.publishers
        self.n_recv = plan.receivers
        self.ctl = Control(self.mp, self.n_recv + self.n_pub)
        self.procs: list = []

    def _start(self, kind: str, index: int, slot: int) -> None:
        p = self.mp.Process(target=_child, args=(self.plan, kind, index, self.ctl, slot),
                            name=f"bench-{kind}-{index}", daemon=True)
        p.start()
        self.procs.append(p)

    def _next(self, timeout: float) -> dict | None:
        try:
            msg = self.ctl.results.get(timeout=timeout)
        except queue.Empty:
            dead = [p for p in self.procs if p.exitcode not in (None, 0)]
            if dead:
                raise BenchError(f"{dead[0].name} exited with code {dead[0].exitcode}")
            return None
        if msg["role"] == "error":
            raise BenchError(msg["error"])
        return msg

    def _wait_ready(self, n: int) -> None:
        deadline = time.monotonic() + self.plan.timeout + 30  # spawn imports included
        ready = 0
        while ready < n:
            if time.monotonic() > deadline:
                raise BenchError(f"only {ready} of {n} clients connected within "
                                 f"{self.plan.timeout + 30:.0f} s")
            msg = self._next(0.2)
            if msg and msg["role"] == "ready":
                ready += 1

    def run(self) -> dict:
        plan = self.plan
        try:
            for r in range(self.n_recv):
                self._start("receiver", r, r)
            for p in range(self.n_pub):
                self._start("publisher", p, self.n_recv + p)
            self._wait_ready(self.n_recv + self.n_pub)
            self.ctl.t0.value = time.monotonic_ns()
            self.ctl.go_event.set()
            pubs, recvs, interrupted = self._watch()
            summary = summarize(plan, pubs, recvs)
            summary["interrupted"] = interrupted
            return summary
        finally:
            self.ctl.stop_event.set()
            self.ctl.release.set()
            for p in self.procs:
                p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join(5)

    def _watch(self) -> tuple[list[dict], list[dict], bool]:
        """Collect every client's figures, printing progress; a first Ctrl-C stops the
        clients and still collects what they measured (a second one quits)."""
        ctl = self.ctl
        pubs: list[dict] = []
        recvs: list[dict] = []
        t0 = time.monotonic()
        last_print, last_counts = t0, (0, 0)
        interrupted_at = None
        while len(recvs) < self.n_recv or len(pubs) < self.n_pub:
            try:
                msg = self._next(0.1)
                if msg and msg["role"] == "publisher":
                    pubs.append(msg)
                    if len(pubs) == self.n_pub:
                        self._set_expected(pubs)
                elif msg and msg["role"] == "receiver":
                    recvs.append(msg)
                now = time.monotonic()
                if interrupted_at is None and now - last_print >= 1.0:
                    last_counts = self._print_progress(now - t0, now - last_print,
                                                       last_counts)
                    last_print = now
                if interrupted_at is not None and now - interrupted_at > STOP_GRACE:
                    silent = self.n_pub + self.n_recv - len(pubs) - len(recvs)
                    raise BenchError(f"interrupted, and {silent} clients did not report "
                                     f"within {STOP_GRACE:.0f} s")
            except KeyboardInterrupt:
                if interrupted_at is not None:
                    raise
                interrupted_at = time.monotonic()
                ctl.stop_event.set()
                print("interrupted: stopping the clients, figures so far follow "
                      "(Ctrl-C again to quit now)", file=self.progress, flush=True)
        ctl.release.set()
        return (sorted(pubs, key=lambda m: m["slot"]), sorted(recvs, key=lambda m: m["slot"]),
                interrupted_at is not None)

    def _set_expected(self, pubs: list[dict]) -> None:
        for r in range(self.n_recv):
            self.ctl.expected[r] = sum(p["per_target"][r] for p in pubs if p["per_target"])
        self.ctl.done.set()

    def _print_progress(self, elapsed: float, dt: float, last: tuple[int, int]) -> tuple:
        sent = sum(self.ctl.counts[self.n_recv + i] for i in range(self.n_pub))
        got = sum(self.ctl.counts[i] for i in range(self.n_recv))
        label = "served" if self.plan.mode == "request" else "delivered"
        print(f"[{elapsed:5.1f}s] sent {sent:,} ({(sent - last[0]) / dt:,.0f}/s)  "
              f"{label} {got:,} ({(got - last[1]) / dt:,.0f}/s)",
              file=self.progress, flush=True)
        return sent, got


def check_plan(plan: Plan, max_payload: int | None = None) -> None:
    """Raise ValueError (one line) for a plan that cannot run."""
    if plan.size < MIN_SIZE:
        raise ValueError(f"--size must be at least {MIN_SIZE} bytes (the send time and "
                         f"index travel in the payload), got {plan.size}")
    if max_payload is not None and plan.size > max_payload:
        raise ValueError(f"--size {plan.size} is above the router's max payload "
                         f"({max_payload} B)")
    if plan.mode in ("pub", "reliable") and plan.receivers == 0 and plan.publishers == 0:
        raise ValueError("nothing to run: --publishers and --receivers are both 0")
    if plan.mode == "request" and plan.receivers == 0:
        raise ValueError("request mode needs --receivers 1 or more (the service workers)")
    if plan.mode in ("pub", "reliable") and plan.receivers == 0 and not plan.tag:
        raise ValueError("--receivers 0 sends to bench:<tag>.0 for a `router bench sub` "
                         "run elsewhere: give both the same --tag")
    if plan.mode != "sub" and plan.publishers < 1:
        raise ValueError(f"{plan.mode} mode needs --publishers 1 or more")
    if plan.mode == "sub" and plan.receivers < 1:
        raise ValueError("sub mode needs --receivers 1 or more")
    if plan.mode == "sub" and not plan.tag:
        raise ValueError("sub mode needs --tag, the same as the publishing run's")


def probe(url: str, timeout: float) -> int:
    """Connect once (fail fast, one line, when no router answers); the router's max
    payload."""
    from .client import Sender

    with Sender(url, "bench-probe", timeout=timeout) as s:
        return s.welcome.max_payload


def main(plan: Plan, as_json: bool = False) -> int:
    """Run ``plan``, print the progress to stderr and the table (or JSON) to stdout."""
    import orjson

    if not plan.tag:
        plan.tag = os.urandom(4).hex()
    check_plan(plan, probe(plan.url, plan.timeout))
    summary = Run(plan).run()
    if as_json:
        print(orjson.dumps(summary).decode())
    else:
        print(table(summary))
    if summary["interrupted"]:
        return 130
    confirmed = {"reliable": summary.get("receipts", {}).get("DELIVERED", 0),
                 "request": summary["delivered"]}.get(plan.mode)
    if confirmed is not None and confirmed < summary["sent"]:
        print(f"router bench: {summary['sent'] - confirmed:,} of {summary['sent']:,} "
              "messages were not confirmed", file=sys.stderr)
        return 1
    return 0
