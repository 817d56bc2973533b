"""The blocking client loops of `router bench`: publisher, receiver, requester, worker."""

from __future__ import annotations

import time
from array import array

from .plan import BenchError, HEAD, Plan, RECV_BATCH, WORKER_CREDIT, WORKER_GROUP, payload
from .control import Pacer, _ends, ctl_ready, ctl_sent

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
    from ..client import Sender
    from ..protocol import MsgClass, Status

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
                    compress_above=-1, on_receipt=on_receipt, on_error=on_error,
                    **plan.keys())
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
    from ..client import Endpoint

    errors = [0]
    ep = Endpoint(plan.url, [plan.address(r)], name=f"bench-recv-{plan.tag}-{r}",
                  timeout=plan.timeout, on_error=lambda e: errors.__setitem__(0, errors[0] + 1),
                  **plan.keys())
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
        """Count one received payload: its latency, and whether it came out of order."""
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
        """This receiver's figures, as it reports them to the parent."""
        return {"role": "receiver", "slot": slot, "received": self.received,
                "reordered": self.reordered, "t_first_ns": self.t_first_ns,
                "t_last_ns": self.t_last_ns, "cpu_s": cpu_s, "lat": self.lat.tobytes()}


def run_requester(plan: Plan, p: int, ctl, slot: int) -> dict:
    """One blocking requester: up to --window requests outstanding, round trip timed."""
    from ..client import Sender
    from ..protocol import ErrorCode

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
                    compress_above=-1, on_reply=on_reply, **plan.keys())
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
    from ..cli import entry_points_of

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
                        name=f"bench-worker-{plan.tag}-{r}", timeout=plan.timeout,
                        **plan.keys())
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
