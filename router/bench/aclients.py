"""The same client loops over router.aio (asyncio)."""

from __future__ import annotations

import asyncio
import time
from array import array

from .plan import HEAD, Plan, RECV_BATCH, payload
from .control import Pacer, _ends, ctl_ready, ctl_sent
from .clients import Tally, _batch

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
    from ..aio import AsyncSender
    from ..protocol import MsgClass, Status

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
        on_error=lambda e: state.__setitem__("errors", state["errors"] + 1), **plan.keys())
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
    from ..aio import AsyncEndpoint

    errors = [0]
    ep = await AsyncEndpoint.connect(plan.url, [plan.address(r)],
                                     name=f"bench-arecv-{plan.tag}-{r}", timeout=plan.timeout,
                                     on_error=lambda e: errors.__setitem__(0, errors[0] + 1),
                                     **plan.keys())
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
    from ..aio import AsyncSender
    from ..protocol import ErrorCode

    sender = await AsyncSender.connect(plan.url, f"bench-areq-{plan.tag}-{p}",
                                       timeout=plan.timeout, compress_above=-1,
                                       **plan.keys())
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
