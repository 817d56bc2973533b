"""Throughput as a timed operation: one round = a fixed batch of ``LATENCY_BATCH`` (10,000)
messages through a live router, so a msg/s regression shows in the compared timings
(``--benchmark-compare``) like any latency one; msg/s is in extra_info.

    pytest benchmarks/test_throughput_batch.py            # ~15 s

One router for the module (journal and fsync on). The sender and the endpoint are in
this process, each on its own SDK engine thread, driven by one application thread: it
sends in chunks of 1,000 and between chunks takes what has arrived (recv_many, one
cumulative ack per batch taken) and the receipts, as a service that is both producer and
consumer would. The router-vs-``zmq.proxy`` ratios of separate native processes are
``benchmarks/test_bench_hop.py``'s.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from benchmarks.latency.live import (
    BATCH, BATCH_ROUNDS, OP_TIMEOUT, PAYLOAD, measure, start_router, stop_router,
)
from router.aio import AsyncEndpoint, AsyncSender
from router.client import Endpoint, Sender
from router.protocol import MsgClass, Status

pytestmark = pytest.mark.timeout(600)

CHUNK = 1000
WARMUP = 3


class Counter:
    """DELIVERED receipts seen (an on_receipt callback)."""

    def __init__(self) -> None:
        self.delivered = 0
        self.other: dict[int, int] = {}

    def __call__(self, r) -> None:
        if r.status == Status.DELIVERED:
            self.delivered += 1
        elif r.status != Status.ACCEPTED:
            self.other[int(r.status)] = self.other.get(int(r.status), 0) + 1


@pytest.fixture(scope="module")
def router():
    r = start_router()
    yield r
    stop_router(r)


def batch_info(benchmark) -> dict:
    """msg/s at the median and the fastest round (after measure() filled the stats)."""
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return {}
    s = stats.stats
    return {"batch": BATCH, "msg_s_median": round(BATCH / s.median),
            "msg_s_best": round(BATCH / s.min)}


def overdue(t0: float, what: str, got: int, counter: Counter | None = None) -> None:
    """Fail a batch that has not finished within its deadline."""
    if time.monotonic() - t0 > OP_TIMEOUT + BATCH / 2000:
        extra = f", {counter.delivered} DELIVERED, other receipts {counter.other}" if counter else ""
        raise TimeoutError(f"{what}: {got} of {BATCH} received{extra}")


def test_batch_reliable(benchmark, router):
    """10,000 reliable (ORDER) messages: every one received and acked, and every
    DELIVERED receipt back at the sender."""
    counter = Counter()
    with Sender(router.url, "batch-bench", on_receipt=counter) as s, \
            Endpoint(router.url, ["merchant:21"]) as ep:

        def take() -> int:
            ds = ep.recv_many(CHUNK * 4, timeout=0)
            if ds:
                ep.ack(ds[-1])
            s.poll()
            return len(ds)

        def batch():
            counter.delivered = 0
            got, t0 = 0, time.monotonic()
            for start in range(0, BATCH, CHUNK):
                for _ in range(min(CHUNK, BATCH - start)):
                    s.send("merchant:21", PAYLOAD, msg_class=MsgClass.ORDER)
                got += take()
            while got < BATCH:
                ds = ep.recv_many(CHUNK * 4, timeout=0.01)
                if ds:
                    ep.ack(ds[-1])
                    got += len(ds)
                s.poll()
                overdue(t0, "reliable batch", got, counter)
            while counter.delivered < BATCH:
                s.poll(0.01)
                overdue(t0, "reliable batch (receipts)", got, counter)
            assert got == BATCH and not counter.other, (got, counter.other)

        measure(benchmark, batch, rounds=BATCH_ROUNDS, warmup=WARMUP, pids=(router.pid,))
    benchmark.extra_info.update(batch_info(benchmark))


def test_batch_best_effort(benchmark, router):
    """10,000 best-effort (NOTICE) messages, every one received."""
    with Sender(router.url, "batch-bench-be") as s, Endpoint(router.url, ["rider:21"]) as ep:

        def batch():
            got, t0 = 0, time.monotonic()
            for start in range(0, BATCH, CHUNK):
                for _ in range(min(CHUNK, BATCH - start)):
                    s.send("rider:21", PAYLOAD, msg_class=MsgClass.NOTICE)
                got += len(ep.recv_many(CHUNK * 4, timeout=0))
            while got < BATCH:
                got += len(ep.recv_many(CHUNK * 4, timeout=0.01))
                overdue(t0, "best-effort batch", got)
            assert got == BATCH, got

        measure(benchmark, batch, rounds=BATCH_ROUNDS, warmup=WARMUP, pids=(router.pid,))
    benchmark.extra_info.update(batch_info(benchmark))


def test_aio_batch_reliable(benchmark, router):
    """The reliable batch through the asyncio SDK (one loop; run_until_complete per
    batch)."""
    loop = asyncio.new_event_loop()
    counter = Counter()
    s = loop.run_until_complete(AsyncSender.connect(router.url, "batch-bench-aio",
                                                    on_receipt=counter))
    ep = loop.run_until_complete(AsyncEndpoint.connect(router.url, ["merchant:22"],
                                                       auto_ack=False))

    async def batch():
        counter.delivered = 0
        got, t0 = 0, time.monotonic()
        for start in range(0, BATCH, CHUNK):
            for _ in range(min(CHUNK, BATCH - start)):
                await s.send("merchant:22", PAYLOAD, msg_class=MsgClass.ORDER)
            await asyncio.sleep(0)  # let the loop take what the engines published
            ds = await ep.recv_many(CHUNK * 4, timeout=0)
            if ds:
                ep.ack(ds[-1])
                got += len(ds)
        while got < BATCH:
            ds = await ep.recv_many(CHUNK * 4, timeout=0.01)
            if ds:
                ep.ack(ds[-1])
                got += len(ds)
            overdue(t0, "aio reliable batch", got, counter)
        while counter.delivered < BATCH:
            await asyncio.sleep(0.001)
            overdue(t0, "aio reliable batch (receipts)", got, counter)
        assert got == BATCH and not counter.other, (got, counter.other)

    try:
        measure(benchmark, lambda: loop.run_until_complete(batch()), rounds=BATCH_ROUNDS,
                warmup=WARMUP, pids=(router.pid,))
    finally:
        loop.run_until_complete(s.close())
        loop.run_until_complete(ep.close())
        loop.close()
    benchmark.extra_info.update(batch_info(benchmark))
