"""User-space network emulation for tests: a fault-injecting TCP proxy.

The test kernels have no ``tc netem``, so bad mobile networks are simulated by putting a
:class:`FaultProxy` between a client and the router's tcp endpoint::

    with FaultProxy(router.url, time_scale=0.1) as net:
        net.set_delay(MOBILE_PROFILE)
        peer = Peer(net.url)          # talks to the router through the faulty link
        net.stall(); ...; net.unstall()
        net.reset_all()
        net.outage(2.0)

The proxy runs an asyncio loop in a daemon thread. Every setter is thread-safe and has
taken effect in the loop by the time it returns. Directions are named from the client's
point of view: ``"up"`` is client → upstream, ``"down"`` is upstream → client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import math
import random
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable, Literal, TypeVar

Direction = Literal["up", "down", "both"]
T = TypeVar("T")

_NORMAL = NormalDist()
_Z95 = _NORMAL.inv_cdf(0.95)
_CHUNK = 64 * 1024
_RST_LINGER = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN


@dataclass(frozen=True)
class DelayProfile:
    """A round-trip latency distribution given by its p50/p95/p99 (seconds).

    Sampled by inverse transform: a lognormal body fitted exactly to p50 and p95, spliced at
    p95 onto a Pareto tail fitted exactly to p95 and p99 (mobile latency has a heavy tail
    that no single lognormal matches), truncated at ``cap``.
    """

    p50: float
    p95: float
    p99: float
    cap: float = 6.0

    def __post_init__(self) -> None:
        if not 0 < self.p50 <= self.p95 <= self.p99 <= self.cap:
            raise ValueError("need 0 < p50 <= p95 <= p99 <= cap")

    @classmethod
    def constant(cls, rtt: float) -> "DelayProfile":
        """A fixed round trip with no jitter."""
        return cls(rtt, rtt, rtt, cap=rtt)

    def quantile(self, q: float) -> float:
        """Round-trip time at probability ``q`` (0 < q < 1)."""
        if q <= 0.95:
            sigma = math.log(self.p95 / self.p50) / _Z95
            x = self.p50 * math.exp(sigma * _NORMAL.inv_cdf(q))
        elif self.p99 == self.p95:
            x = self.p95
        else:
            # Pareto survival S(x) = 0.05 * (x / p95) ** -alpha, with S(p99) = 0.01.
            alpha = math.log(5) / math.log(self.p99 / self.p95)
            x = self.p95 * (0.05 / (1 - q)) ** (1 / alpha)
        return min(x, self.cap)

    def sample_rtt(self, rng: random.Random) -> float:
        """One round-trip time draw (seconds)."""
        return self.quantile(rng.random() or 1e-12)  # inv_cdf(0) would raise

    def sample_one_way(self, rng: random.Random) -> float:
        """One one-way draw: half a round-trip draw."""
        return self.sample_rtt(rng) / 2


#: Round trip p50 350 ms, p95 725 ms, p99 2.3 s (one-way is half of each draw).
MOBILE_PROFILE = DelayProfile(p50=0.350, p95=0.725, p99=2.3)


@dataclass
class Counters:
    """Proxy statistics; :attr:`FaultProxy.counters` returns a snapshot."""

    accepted: int = 0      # client connections accepted (including refused ones)
    refused: int = 0       # reset on accept: during an outage or when upstream refused
    resets: int = 0        # established connections reset by reset_all()/outage()
    peer_resets: int = 0   # connections torn down because one side reset or errored
    closed: int = 0        # connections that ended with an orderly FIN on both sides
    active: int = 0        # connections currently proxied
    bytes_up: int = 0      # bytes written to upstream
    bytes_down: int = 0    # bytes written to clients


@dataclass
class _Link:
    """Fault settings of one direction, shared by all connections."""

    delay: DelayProfile | None = None
    rate: float | None = None   # bytes/s, None = unlimited
    burst: float = 0.0          # token bucket depth in bytes
    flowing: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.flowing.set()


def _abort(writer: asyncio.StreamWriter | None, rst: bool) -> None:
    """Drop a connection at once, with an RST if ``rst`` (else the kernel's usual close)."""
    if writer is None:
        return
    if rst:
        sock = writer.get_extra_info("socket")
        try:
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_LINGER)
        except OSError:
            pass  # already closed: nothing left to reset
    writer.transport.abort()


class _Conn:
    """One proxied connection: its two sockets and the task serving it."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.task = asyncio.current_task()

    def abort(self, rst: bool) -> None:
        _abort(self.client, rst)
        _abort(self.upstream, rst)
        # Never cancel ourselves: a handler that returns with a pending cancel ends
        # "cancelled" and asyncio's stream callback logs that as an error.
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()


class _Pipe:
    """One direction of one connection: reader → FIFO of (release time, chunk) → writer.

    Two tasks so that delayed chunks are pipelined (many in flight) while a FIFO with
    non-decreasing release times keeps TCP's byte order.
    """

    def __init__(self, proxy: "FaultProxy", direction: str,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proxy, self.direction = proxy, direction
        self.link = proxy._links[direction]
        self.reader, self.writer = reader, writer
        self.queue: deque[tuple[float, bytes]] = deque()
        self.queued = 0
        self.has_data, self.has_room = asyncio.Event(), asyncio.Event()
        self.last_release = 0.0
        self.tokens, self.stamp = 0.0, time.monotonic()

    async def read_side(self) -> None:
        """Read chunks and schedule them; pause reading when the buffer is full."""
        while True:
            data = await self.reader.read(_CHUNK)
            now = time.monotonic()
            self.last_release = max(self.last_release, now + self.proxy._sample(self.link))
            self.queue.append((self.last_release, data))
            self.queued += len(data)
            self.has_data.set()
            if not data:
                return  # EOF is queued too, so the FIN is delayed like data
            while self.queued > self.proxy.max_buffer:
                # Stop reading so the kernel's windows fill and the sender blocks, as TCP would.
                self.has_room.clear()
                await self.has_room.wait()

    async def write_side(self) -> None:
        """Release chunks in order once due, not stalled, and within the bandwidth."""
        while True:
            while not self.queue:
                self.has_data.clear()
                await self.has_data.wait()
            release, data = self.queue.popleft()
            if (wait := release - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            if not data:
                await self.link.flowing.wait()
                self.writer.write_eof()
                return
            for piece in self._pieces(data):
                await self._throttle(len(piece))
                if not self.link.flowing.is_set():
                    await self.link.flowing.wait()
                self.writer.write(piece)  # no await between the stall check and the write
                self.proxy._count(self.direction, len(piece))
                await self.writer.drain()
            self.queued -= len(data)
            self.has_room.set()

    def _pieces(self, data: bytes) -> list[bytes]:
        """Split a chunk into ~20 ms of bandwidth each, so capped output stays smooth."""
        rate = self.link.rate
        if not rate:
            return [data]
        size = max(1024, int(rate / 50))
        return [data[i:i + size] for i in range(0, len(data), size)]

    async def _throttle(self, n: int) -> None:
        """Token bucket that may go into debt; sleeping repays the debt."""
        rate, now = self.link.rate, time.monotonic()
        if not rate:
            self.tokens, self.stamp = 0.0, now
            return
        self.tokens = min(self.link.burst, self.tokens + (now - self.stamp) * rate) - n
        self.stamp = now
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / rate)


class FaultProxy:
    """A TCP proxy on 127.0.0.1:<free port> that injects delay, bandwidth caps, stalls,
    resets and outages between its clients and one upstream endpoint.

    ``upstream`` is ``(host, port)`` or ``"tcp://host:port"``. ``time_scale`` multiplies
    every sampled delay (0.1 runs the mobile profile ten times faster; it may be reassigned
    at run time); explicit durations such as ``outage(seconds)`` are wall-clock. ``max_buffer`` bounds the bytes held per
    connection and direction before the proxy stops reading (TCP backpressure).
    """

    def __init__(self, upstream: str | tuple[str, int], *, time_scale: float = 1.0,
                 seed: int | None = None, max_buffer: int = 1 << 20, port: int = 0) -> None:
        self.upstream = _parse_endpoint(upstream)
        self.time_scale = time_scale
        self.max_buffer = max_buffer
        self.port = port
        self._rng = random.Random(seed)
        self._links = {"up": _Link(), "down": _Link()}
        self._counters = Counters()
        self._conns: set[_Conn] = set()
        self._outage_until = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The endpoint clients connect to instead of the upstream."""
        return f"tcp://127.0.0.1:{self.port}"

    def start(self) -> "FaultProxy":
        """Start the loop thread and listen; returns once connections are accepted."""
        if self._loop is not None:
            raise RuntimeError("FaultProxy already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name=f"FaultProxy->{self.upstream[1]}", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        """Close the listener and every connection, then end the loop thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults ------------------------------------------------------------------------

    def set_delay(self, profile: DelayProfile | None, direction: Direction = "both") -> None:
        """Delay each chunk by a one-way draw from ``profile`` (None: no added delay)."""
        def apply() -> None:
            for link in self._pick(direction):
                link.delay = profile
        self._call(apply)

    def set_bandwidth(self, bytes_per_s: float | None, direction: Direction = "both",
                      burst: int | None = None) -> None:
        """Cap each connection's throughput per direction (None: unlimited).

        ``burst`` is the token bucket depth; by default 50 ms worth (at least 4 KiB).
        """
        if bytes_per_s is not None and bytes_per_s <= 0:
            raise ValueError("bytes_per_s must be positive (use stall() to stop traffic)")

        def apply() -> None:
            for link in self._pick(direction):
                link.rate = bytes_per_s
                link.burst = burst if burst is not None else max(4096, (bytes_per_s or 0) / 20)
        self._call(apply)

    def stall(self, direction: Direction = "both") -> None:
        """Stop all bytes (blackhole); connections stay open and data is buffered."""
        self._set_flowing(direction, False)

    def unstall(self, direction: Direction = "both") -> None:
        """Let buffered and new bytes flow again, in order."""
        self._set_flowing(direction, True)

    @property
    def stalled(self) -> bool:
        """True if either direction is stalled."""
        return any(not link.flowing.is_set() for link in self._links.values())

    def reset_all(self) -> int:
        """Reset (RST) both sides of every current connection; return how many."""
        return self._call(self._reset_all)

    def outage(self, seconds: float) -> None:
        """Reset every connection now and reset new ones on accept for ``seconds``."""
        def apply() -> None:
            self._outage_until = time.monotonic() + seconds
            self._reset_all()
        self._call(apply)

    @property
    def in_outage(self) -> bool:
        return time.monotonic() < self._outage_until

    def clear(self) -> None:
        """Remove every fault: no delay, no cap, unstalled, outage over."""
        self.set_delay(None)
        self.set_bandwidth(None)
        self.unstall()
        self._outage_until = 0.0

    @property
    def counters(self) -> Counters:
        """A snapshot of the statistics."""
        return self._call(lambda: dataclasses.replace(self._counters))

    # -- internals (loop thread) -------------------------------------------------------

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the loop thread and wait, so a fault is in force on return."""
        loop = self._loop
        if loop is None or not loop.is_running() or self._in_loop_thread():
            return fn()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:  # hand any failure back to the caller's thread
                done.set_exception(exc)
        loop.call_soon_threadsafe(run)
        return done.result(timeout=10)

    def _in_loop_thread(self) -> bool:
        return self._thread is not None and threading.get_ident() == self._thread.ident

    def _set_flowing(self, direction: Direction, flowing: bool) -> None:
        def apply() -> None:
            for link in self._pick(direction):
                link.flowing.set() if flowing else link.flowing.clear()
        self._call(apply)

    def _pick(self, direction: Direction) -> list[_Link]:
        if direction == "both":
            return list(self._links.values())
        return [self._links[direction]]

    def _sample(self, link: _Link) -> float:
        profile = link.delay
        return profile.sample_one_way(self._rng) * self.time_scale if profile else 0.0

    def _count(self, direction: str, n: int) -> None:
        if direction == "up":
            self._counters.bytes_up += n
        else:
            self._counters.bytes_down += n

    def _reset_all(self) -> int:
        conns = list(self._conns)
        for conn in conns:
            conn.abort(rst=True)
            self._conns.discard(conn)
        self._counters.resets += len(conns)
        self._counters.active = len(self._conns)
        return len(conns)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        tasks = [c.task for c in self._conns if c.task is not None]
        for conn in list(self._conns):
            conn.abort(rst=False)
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _on_client(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        self._counters.accepted += 1
        if self.in_outage:
            self._counters.refused += 1
            _abort(writer, rst=True)
            return
        conn = _Conn(writer)
        self._conns.add(conn)
        self._counters.active = len(self._conns)
        try:
            await self._serve(conn, reader, writer)
        except asyncio.CancelledError:
            pass  # reset_all()/stop() already aborted the sockets
        except OSError:
            # Upstream refused: the client sees the refusal as a reset.
            self._counters.refused += 1
            conn.abort(rst=True)
        finally:
            self._conns.discard(conn)
            self._counters.active = len(self._conns)

    async def _serve(self, conn: _Conn, c_reader: asyncio.StreamReader,
                     c_writer: asyncio.StreamWriter) -> None:
        # During a stall the connection is accepted (the kernel does that) but upstream is not
        # contacted until bytes may flow, as a SYN into a blackhole would not arrive.
        for link in self._links.values():
            await link.flowing.wait()
        u_reader, conn.upstream = await asyncio.open_connection(*self.upstream)
        pipes = [_Pipe(self, "up", c_reader, conn.upstream), _Pipe(self, "down", u_reader, c_writer)]
        tasks = [asyncio.create_task(coro) for p in pipes for coro in (p.read_side(), p.write_side())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if any(not t.cancelled() and t.exception() is not None for t in done):
            # One side reset or broke: pass it on as a reset, like a dying TCP peer.
            self._counters.peer_resets += 1
            conn.abort(rst=True)
        else:
            self._counters.closed += 1
            c_writer.close()
            conn.upstream.close()


def _parse_endpoint(upstream: str | tuple[str, int]) -> tuple[str, int]:
    """``(host, port)`` from a tuple or a ``tcp://host:port`` URL."""
    if isinstance(upstream, tuple):
        return upstream
    host, _, port = upstream.removeprefix("tcp://").rpartition(":")
    return host, int(port)
