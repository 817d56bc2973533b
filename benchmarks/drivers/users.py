"""The users' benchmark's driver program: one Python publisher or receiver process of one
messaging system, through that system's own Python client.

    python -m benchmarks.drivers.users publisher CONFIG.json
    python -m benchmarks.drivers.users receiver  CONFIG.json

``system`` in the config picks the client:
  sdk           this SDK, blocking (router.client), best effort NOTICE
  sdk-reliable  this SDK, blocking, ORDER: the receiver acks, the publisher waits for
                DELIVERED receipts (at most ``window`` unconfirmed)
  sdk-asyncio   this SDK, asyncio (router.aio), best effort NOTICE
  nats          nats-py through nats-server, core publish/subscribe
  jetstream     nats-py, JetStream stream on file storage: publish_async with at most
                ``window`` publishes waiting for their PubAck; a pull consumer with
                AckAll acks the last message of each fetched batch
  redis         redis-py with hiredis: PUBLISH pipelined per batch, PubSub receiver

The SDK systems run the very loops of `router bench` (router/bench/), through a
:class:`DriverControl` in place of its shared-memory control. Every payload is
router.bench.HEAD (send time CLOCK_MONOTONIC ns, publisher, index) then padding; the
receiver writes one latency sample (int64 ns) per message to ``lat_file``.

Protocol with the orchestrator (benchmarks/harness/driver_protocol.py): ``ready`` once
connected (and subscribed), ``go`` starts; the publisher prints ``sent`` when its last
message is out and its receipts are in, then holds its connection until ``close``; the
orchestrator says ``done`` to the receiver once the publisher has sent, after which it
stops at ``count`` messages or ``idle`` seconds without one; both end with ``result``.

Config: system, endpoint, count, rate (0: as fast as possible), payload, window, idle,
deadline, lat_file (receiver), connect_timeout, go_timeout.
"""

from __future__ import annotations

import asyncio
import sys
import time
from array import array

from benchmarks.harness.driver_protocol import (DriverError, driver_main, emit, poll_word,
                                                wait_word)

#: Messages handed to a client in one go by the paced loops.
BATCH = 64
SUBJECT = "bench.users"
STREAM = "BENCHUSERS"


def _head():
    from router.bench import HEAD

    return HEAD


def write_lat(lat: array, path: str | None) -> None:
    if path:
        with open(path, "wb") as fh:
            fh.write(lat.tobytes())


#: Seconds between two looks at stdin for "done" (a select per message would be CPU
#: counted against the receiver).
WORD_EVERY = 0.05


class DriverControl:
    """router.bench's control, spoken over the driver protocol (stdin words, JSON out)."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.done_word = False
        self.looked = 0.0

    def ready(self, slot: int) -> None:
        emit("ready")

    def wait_go(self) -> int:
        wait_word(float(self.cfg.get("go_timeout", 120)))
        return time.monotonic_ns()

    def tick(self, slot: int, n: int) -> None:
        pass

    def sent(self, slot: int, result: dict) -> None:
        emit("sent", sent=result["sent"])

    def expected_for(self, r: int) -> int | None:
        if not self.done_word and time.monotonic() - self.looked >= WORD_EVERY:
            self.looked = time.monotonic()
            self.done_word = poll_word() == "done"
        return int(self.cfg["count"]) if self.done_word else None

    def stopped(self) -> bool:
        return False

    def released(self) -> bool:
        return poll_word() in ("close", "eof")


def _plan(cfg: dict):
    from router.bench import Plan

    mode = "reliable" if cfg["system"] == "sdk-reliable" else "pub"
    return Plan(mode=mode, url=cfg["endpoint"], size=int(cfg.get("payload", 200)),
                count=int(cfg["count"]), rate=float(cfg.get("rate", 0)), publishers=1,
                receivers=1, window=int(cfg.get("window", 1000)),
                api="asyncio" if cfg["system"] == "sdk-asyncio" else "blocking",
                tag=cfg.get("tag", "users"), idle=float(cfg.get("idle", 2.0)),
                timeout=float(cfg.get("connect_timeout", 10)),
                server_key=cfg.get("server_key"), key=cfg.get("key"))


def sdk_publisher(cfg: dict) -> None:
    from router.bench import client_role

    plan = _plan(cfg)
    res = client_role(plan, "publisher")(plan, 0, DriverControl(cfg), 1)
    emit("result", **{k: v for k, v in res.items() if k != "lat"})


def sdk_receiver(cfg: dict) -> None:
    from router.bench import client_role

    plan = _plan(cfg)
    res = client_role(plan, "receiver")(plan, 0, DriverControl(cfg), 0)
    write_lat(array("q", res.pop("lat")), cfg.get("lat_file"))
    emit("result", **res)


# ---------------------------------------------------------------------------------------
# Paced loops shared by the other systems


class Paced:
    """Open loop pacing as router.bench.Pacer: message i is due at go + i / rate."""

    def __init__(self, cfg: dict) -> None:
        self.rate = float(cfg.get("rate", 0))
        self.count = int(cfg["count"])
        self.t0 = time.monotonic()

    def due(self, sent: int) -> int:
        """Messages that may go now (BATCH at most)."""
        left = self.count - sent
        if not self.rate:
            return min(BATCH, left)
        return max(0, min(BATCH, left, int((time.monotonic() - self.t0) * self.rate) + 1 - sent))

    def wait(self, sent: int) -> float:
        return max(0.0, self.t0 + sent / self.rate - time.monotonic()) if self.rate else 0.0


class Receiving:
    """A receiver's counts: messages, latency samples, first and last receive."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.head = _head()
        self.count = int(cfg["count"])
        self.idle = float(cfg.get("idle", 2.0))
        self.lat = array("q")
        self.received = 0
        self.t_first_ns = self.t_last_ns = 0
        self.done_word = False
        self.looked = 0.0
        self.since = time.monotonic()

    def add(self, data: bytes) -> None:
        now = time.monotonic_ns()
        self.lat.append(now - self.head.unpack_from(data)[0])
        self.received += 1
        if not self.t_first_ns:
            self.t_first_ns = now
        self.t_last_ns = now

    def finished(self) -> bool:
        if self.received >= self.count:
            return True
        if not self.done_word and time.monotonic() - self.looked >= WORD_EVERY:
            self.looked = time.monotonic()
            self.done_word = poll_word() == "done"
        last = max(self.since, self.t_last_ns / 1e9)
        return self.done_word and time.monotonic() - last >= self.idle

    def result(self, cpu_s: float, **extra) -> dict:
        write_lat(self.lat, self.cfg.get("lat_file"))
        return {"received": self.received, "t_first_ns": self.t_first_ns,
                "t_last_ns": self.t_last_ns, "cpu_s": cpu_s, **extra}


def _payloads(cfg: dict):
    head = _head()
    pad = bytes(int(cfg.get("payload", 200)) - head.size)
    return lambda i: head.pack(time.monotonic_ns(), 0, i & 0xFFFFFFFF) + pad


# ---------------------------------------------------------------------------------------
# nats-py: core and JetStream


async def _nats_connect(cfg: dict):
    import nats

    return await nats.connect(cfg["endpoint"], connect_timeout=int(cfg.get("connect_timeout", 10)),
                              allow_reconnect=False, pending_size=8 << 20)


async def _nats_publisher(cfg: dict) -> None:
    nc = await _nats_connect(cfg)
    make = _payloads(cfg)
    js = None
    acked = {"n": 0, "last": 0, "errors": 0}
    if cfg["system"] == "jetstream":
        js = nc.jetstream(publish_async_max_pending=int(cfg.get("window", 1000)))

    def on_ack(fut: asyncio.Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            acked["errors"] += 1
        else:
            acked["n"] += 1
            acked["last"] = time.monotonic_ns()

    emit("ready")
    await asyncio.to_thread(wait_word, float(cfg.get("go_timeout", 120)))
    pace = Paced(cfg)
    cpu0, first_ns, sent = time.process_time(), time.monotonic_ns(), 0
    while sent < pace.count:
        n = pace.due(sent)
        if not n:
            await asyncio.sleep(pace.wait(sent))
            continue
        for i in range(sent, sent + n):
            if js is None:
                await nc.publish(SUBJECT, make(i))
            else:
                (await js.publish_async(SUBJECT, make(i))).add_done_callback(on_ack)
        sent += n
        await asyncio.sleep(0)
    last_ns = time.monotonic_ns()
    await nc.flush(timeout=60)
    if js is not None:
        await asyncio.wait_for(js.publish_async_completed(), 60)
    cpu = time.process_time() - cpu0
    emit("sent", sent=sent)
    while poll_word() not in ("close", "eof"):
        await asyncio.sleep(0.05)
    await nc.close()
    emit("result", sent=sent, t_first_ns=first_ns, t_last_ns=last_ns, cpu_s=cpu,
         acked=acked["n"] if js is not None else None,
         t_acked_ns=acked["last"] or None, ack_errors=acked["errors"])


async def _nats_receiver(cfg: dict) -> None:
    from nats.js.api import AckPolicy, ConsumerConfig, StorageType

    nc = await _nats_connect(cfg)
    rx = Receiving(cfg)
    if cfg["system"] == "jetstream":
        js = nc.jetstream()
        await js.add_stream(name=STREAM, subjects=[SUBJECT], storage=StorageType.FILE)
        sub = await js.pull_subscribe(SUBJECT, durable="bench", stream=STREAM,
                                      config=ConsumerConfig(ack_policy=AckPolicy.ALL,
                                                            max_ack_pending=-1))
        emit("ready")
        await asyncio.to_thread(wait_word, float(cfg.get("go_timeout", 120)))
        rx.since = time.monotonic()
        cpu0 = time.process_time()
        while not rx.finished():
            try:
                msgs = await sub.fetch(batch=256, timeout=0.2)
            except asyncio.TimeoutError:  # nats.errors.TimeoutError subclasses it
                continue
            for m in msgs:
                rx.add(m.data)
            if msgs:
                await msgs[-1].ack()  # AckAll: cumulative
    else:
        async def on_msg(m) -> None:  # nats-py's fast path: a callback per message
            rx.add(m.data)

        sub = await nc.subscribe(SUBJECT, cb=on_msg, pending_msgs_limit=-1,
                                 pending_bytes_limit=-1)
        await nc.flush()
        emit("ready")
        await asyncio.to_thread(wait_word, float(cfg.get("go_timeout", 120)))
        rx.since = time.monotonic()
        cpu0 = time.process_time()
        while not rx.finished():
            await asyncio.sleep(0.02)
    cpu = time.process_time() - cpu0
    await nc.close()
    emit("result", **rx.result(cpu))


# ---------------------------------------------------------------------------------------
# redis-py + hiredis


def _redis(cfg: dict):
    import redis

    host, port = cfg["endpoint"].rsplit(":", 1)
    return redis.Redis(host=host.split("//")[-1], port=int(port),
                       socket_connect_timeout=float(cfg.get("connect_timeout", 10)))


def redis_publisher(cfg: dict) -> None:
    r = _redis(cfg)
    r.ping()
    make = _payloads(cfg)
    emit("ready")
    wait_word(float(cfg.get("go_timeout", 120)))
    pace = Paced(cfg)
    cpu0, first_ns, sent, subscribers = time.process_time(), time.monotonic_ns(), 0, 0
    pipe = r.pipeline(transaction=False)
    while sent < pace.count:
        n = pace.due(sent)
        if not n:
            time.sleep(pace.wait(sent))
            continue
        for i in range(sent, sent + n):
            pipe.publish(SUBJECT, make(i))
        subscribers = max(subscribers, max(pipe.execute()))
        sent += n
    last_ns = time.monotonic_ns()
    cpu = time.process_time() - cpu0
    emit("sent", sent=sent)
    wait_word(float(cfg.get("deadline", 120)) + 60, word="close")
    r.close()
    emit("result", sent=sent, t_first_ns=first_ns, t_last_ns=last_ns, cpu_s=cpu,
         subscribers=subscribers)


def redis_receiver(cfg: dict) -> None:
    r = _redis(cfg)
    ps = r.pubsub(ignore_subscribe_messages=True)
    ps.subscribe(SUBJECT)
    deadline = time.monotonic() + float(cfg.get("connect_timeout", 10))
    while ps.get_message(timeout=0.1) is None and not ps.subscribed:
        if time.monotonic() > deadline:
            raise DriverError("redis subscription not confirmed")
    rx = Receiving(cfg)
    emit("ready")
    wait_word(float(cfg.get("go_timeout", 120)))
    rx.since = time.monotonic()
    cpu0 = time.process_time()
    while not rx.finished():
        m = ps.get_message(timeout=0.2)
        if m is not None and m["type"] == "message":
            rx.add(m["data"])
    cpu = time.process_time() - cpu0
    ps.close()
    emit("result", **rx.result(cpu))


# ---------------------------------------------------------------------------------------


def publisher(cfg: dict) -> None:
    system = cfg["system"]
    if system.startswith("sdk"):
        sdk_publisher(cfg)
    elif system in ("nats", "jetstream"):
        asyncio.run(_nats_publisher(cfg))
    elif system == "redis":
        redis_publisher(cfg)
    else:
        raise DriverError(f"unknown system {system!r}")


def receiver(cfg: dict) -> None:
    system = cfg["system"]
    if system.startswith("sdk"):
        sdk_receiver(cfg)
    elif system in ("nats", "jetstream"):
        asyncio.run(_nats_receiver(cfg))
    elif system == "redis":
        redis_receiver(cfg)
    else:
        raise DriverError(f"unknown system {system!r}")


if __name__ == "__main__":
    sys.exit(driver_main({"publisher": publisher, "receiver": receiver}, __doc__))
