"""``router gateway``: apps over WebSocket on one side, one GATEWAY connection to the
router on the other (docs/GATEWAY.md).

An app opens a WebSocket on ``/ws`` and sends ``hello`` with its token (never in the
URL) and the last sequence it processed. The gateway verifies the token
(:mod:`router.auth.tokens`), takes the address over from any other connection of the
same party, binds it on its router connection resuming after that sequence, and answers
``welcome``. Deliveries go to the app in order; the app's cumulative ``ack`` is what the
gateway acks to the router, so what an app never processed is delivered again when it
returns. Everything else the gateway serves over HTTP: the web apps (``/``,
``/user``, ``/merchant``, ``/rider``) and, on the metrics port, ``/metrics``,
``/healthz`` and ``/readyz``.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import Counter, Gauge, Histogram
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from router import httpd
from router.aio import AsyncEndpoint
from router.auth import tokens
from router.auth.credentials import TokenKey
from router.protocol import Delivery, MsgClass, Role, Status

from . import frames
from .app import AppConnection
from .frames import Close, FrameError
from .heap import LongLivedHeap
from .policy import may_send

log = logging.getLogger("router.gateway")

WEB = Path(__file__).parent / "web"
PAGES = {"/": "index.html", "/user": "user.html", "/merchant": "merchant.html",
         "/rider": "rider.html"}
#: Frames an app may send per second (acks included); past it: closed, RATE_LIMITED.
APP_FRAMES_PER_SECOND = 200
#: Seconds the gateway waits for an app to answer its close frame (then drops it).
CLOSE_TIMEOUT_S = 2.0
#: Seconds between the watcher's ping steps, each pinging its share of the apps.
PING_STEP_S = 0.05
#: Bounds of gateway_gc_pause_seconds; a pause from GC_WARN_S on is logged.
GC_BOUNDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
GC_WARN_S = 0.1
E2E_BOUNDS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass
class GatewayConfig:
    """How one gateway runs."""

    router: str
    token_keys: tuple[TokenKey, ...]
    audience: str = "order-router"
    name: str = "gateway"
    client_options: dict[str, Any] = field(default_factory=dict)  # CURVE keys
    max_reliable: int = 2000  # per app: reliable frames unwritten before TOO_SLOW
    max_notices: int = 500
    ping_interval: float = 20.0
    demo_tokens: bool = False  # /token?address=... issues tokens (the demo only)
    freeze_heap: bool = True  # keep long-lived objects out of full collections (heap.py)


class GatewayMetrics:
    """The gateway's series, in its own registry (docs/METRICS.md, Gateway)."""

    def __init__(self) -> None:
        self.registry = r = httpd.process_registry()
        self.connections = Gauge("gateway_connections", "app connections, by the kind of "
                                 "their address", ["party"], registry=r)
        self.messages_in = Counter("gateway_messages_in", "frames sent by apps and passed "
                                   "to the router", registry=r)
        self.messages_out = Counter("gateway_messages_out", "deliveries written to apps, by "
                                    "class", ["class"], registry=r)
        self.resumes = Counter("gateway_resumes", "hellos that resumed after a sequence",
                               registry=r)
        self.shed = Counter("gateway_shed", "best-effort deliveries not written: shed "
                            "notices and conflated positions", registry=r)
        self.closed = Counter("gateway_closed", "connections closed by the gateway, by "
                              "reason", ["reason"], registry=r)
        self.queued = Gauge("gateway_queued", "frames waiting to be written to apps",
                            registry=r)
        self.e2e = Histogram("gateway_e2e_latency_seconds", "router ACCEPTED to written to "
                             "the app, by class", ["class"], buckets=E2E_BOUNDS, registry=r)
        self.gc_pause = Histogram("gateway_gc_pause_seconds", "how long each garbage "
                                  "collection of the oldest generation stopped the gateway",
                                  buckets=GC_BOUNDS, registry=r)
        # each class's series, looked up once: labels() costs more than the update
        self._out = {c: self.messages_out.labels(c.name.lower()) for c in MsgClass}
        self._e2e = {c: self.e2e.labels(c.name.lower()) for c in MsgClass}
        for reason in Close:
            self.closed.labels(reason.name.lower())
        for kind in ("user", "merchant", "rider"):
            self.connections.labels(kind)

    def written(self, msg_class: int, age_s: float) -> None:
        """A delivery of ``msg_class`` was written to its app ``age_s`` after the
        router accepted it."""
        self._out[msg_class].inc()
        self._e2e[msg_class].observe(age_s)

    def gc_paused(self, seconds: float, collected: int) -> None:
        """A full collection stopped the gateway for ``seconds``: with 10,000 apps the
        heap is large, and the pause shows in every app's latency at once."""
        self.gc_pause.observe(seconds)
        if seconds >= GC_WARN_S:
            log.warning("a full garbage collection stopped the gateway for %.0f ms "
                        "(%d objects collected)", seconds * 1000, collected)


class Gateway:
    """The gateway's state: its router connection and the apps connected to it."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        self.apps: dict[str, AppConnection] = {}
        self.metrics = GatewayMetrics()
        self.health = httpd.Health()
        self.endpoint: AsyncEndpoint | None = None
        self._pump: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self._heap = LongLivedHeap(freeze=cfg.freeze_heap, on_pause=self.metrics.gc_paused)
        # Summed when scraped, not per batch: with 10,000 apps a sum per batch of
        # deliveries is most of the gateway's CPU. list() copies the values atomically
        # (the scrape runs in the metrics thread).
        self.metrics.queued.set_function(
            lambda: sum(a.queued() for a in list(self.apps.values())))

    async def start(self) -> None:
        """Connect to the router (GATEWAY role, no address bound yet)."""
        self.endpoint = await AsyncEndpoint.connect(
            self.cfg.router, [], name=self.cfg.name, role=Role.GATEWAY, auto_ack=False,
            on_error=self._router_error, **self.cfg.client_options)
        self._pump = asyncio.create_task(self._from_router())
        self._watcher = asyncio.create_task(self._watch())
        self.health.set_ready(True)

    async def close_apps(self) -> None:
        """Close every app (GOING_AWAY: they resume elsewhere), all at once; each close
        is bounded by CLOSE_TIMEOUT_S."""
        self.health.stopping()
        closing = [asyncio.create_task(self._close(app, Close.GOING_AWAY,
                                                   "the gateway is stopping"))
                   for app in list(self.apps.values())]
        if closing:
            await asyncio.wait(closing)

    async def stop(self) -> None:
        """Close what apps remain, then the router link."""
        await self.close_apps()
        for task in (self._pump, self._watcher):
            if task:
                task.cancel()
        self._heap.close()
        if self.endpoint:
            await self.endpoint.close()

    def _router_error(self, err) -> None:
        log.warning("router: %s", err)

    # ---- the router side ----------------------------------------------------------------

    async def _from_router(self) -> None:
        """Hand each delivery to its app's queue. An address with no app (it left a
        moment ago) is skipped: unacked, the router keeps it for the app's return."""
        while True:
            batch = await self.endpoint.recv_many(1000, timeout=1.0)
            self.health.beat()
            for d in batch:
                app = self.apps.get(d.address)
                if app is None or app.closed:
                    continue
                app.offer(d)

    def _written(self, app: AppConnection, d: Delivery) -> None:
        self.metrics.written(d.msg_class, max(app.age_ms(d), 0) / 1000)

    async def _watch(self) -> None:
        """Every second close the apps that are too slow; every ``PING_STEP_S`` ping
        the next slice of apps, so that every app is pinged once per
        ``ping_interval``; one whose previous ping is unanswered when its turn comes
        again is closed. Spread thin, not in bursts: all 10,000 pings at once held
        deliveries up for 0.7 s (p99 end to end 701 ms against 20 ms without them), and
        500 a second at once still put p99 at 40-60 ms, the pongs coming back together
        (11 ms without pings). One task for all apps: websockets' own keepalive is a
        task per connection (about 1 KiB each)."""
        every = self.cfg.ping_interval
        step = min(PING_STEP_S, every) if every > 0 else 1.0
        loop = asyncio.get_running_loop()
        cursor, owed, next_check = 0, 0.0, loop.time() + 1.0
        while True:
            await asyncio.sleep(step)
            if loop.time() >= next_check:
                next_check = loop.time() + 1.0
                self._heap.tick()
                self._close_slow()
            if every > 0:
                # each app once per interval: a step owes n * step / every pings,
                # the fractions carried over (one app: one ping in 400 steps)
                apps = list(self.apps.values())
                owed = min(owed + len(apps) * step / every, float(len(apps)))
                share = int(owed)
                owed -= share
                if cursor >= len(apps):
                    cursor = 0
                await self._ping(apps[cursor:cursor + share])
                cursor += share

    def _close_slow(self) -> None:
        """Close the apps that hold more than ``max_reliable`` unwritten reliable frames
        and wrote none since the last look: they are not reading. (A returning app gets
        a window at once; that is a burst, not slowness.)"""
        for app in list(self.apps.values()):
            if not app.closed and app.stuck():
                asyncio.create_task(self._close(
                    app, Close.TOO_SLOW, f"{len(app.reliable)} reliable messages unread"))

    async def _ping(self, apps: list[AppConnection]) -> None:
        """Ping ``apps``; close those whose previous ping is still unanswered. An app
        whose socket is not draining gets no ping (sending it would wait for the
        drain): it counts as unanswered at its next turn."""
        for i, app in enumerate(apps):
            if app.closed:
                continue
            if app.pong is not None and not app.pong.done():
                asyncio.create_task(self._close(app, Close.PING_TIMEOUT,
                                                "no answer to the last ping"))
                continue
            if app.write_blocked():
                app.pong = asyncio.get_running_loop().create_future()  # never answered
                continue
            try:
                app.pong = await app.ws.ping()
            except ConnectionClosed:
                continue
            if i % 100 == 99:
                await asyncio.sleep(0)  # let deliveries through between pings

    # ---- the app side -------------------------------------------------------------------

    async def handle(self, ws: ServerConnection) -> None:
        """One app's WebSocket, from hello to close."""
        try:
            hello = await self._hello(ws)
        except (FrameError, tokens.TokenError, asyncio.TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or "no hello in time"
            self.metrics.closed.labels("unauthorized").inc()
            await ws.close(Close.UNAUTHORIZED, f"{reason}: {exc}"[:120])
            return
        except ConnectionClosed:
            return
        address, last_seq = hello
        app = AppConnection(ws, address, last_seq, max_reliable=self.cfg.max_reliable,
                            max_notices=self.cfg.max_notices, on_written=self._written)
        old = self.apps.get(address)
        if old is not None:
            await self._close(old, Close.TAKEN_OVER, "another connection of this party "
                              "took the address over")
        self.apps[address] = app
        self.metrics.connections.labels(app.kind).inc()
        if last_seq:
            self.metrics.resumes.inc()
        self.endpoint.bind_at({address: last_seq})
        try:  # from here on, however the app goes, it leaves (its address is unbound)
            await ws.send(frames.welcome(address, last_seq, self.cfg.ping_interval).decode())
            await self._read(app)
        except ConnectionClosed:
            pass
        finally:
            app.stop()
            await self._leave(app)

    async def _hello(self, ws: ServerConnection) -> tuple[str, int]:
        raw = await asyncio.wait_for(ws.recv(), frames.HELLO_TIMEOUT_S)
        frame = frames.parse_app_frame(raw)
        if frame["type"] != "hello":
            raise FrameError("the first frame must be hello")
        claims = tokens.verify(str(frame["token"]), self.cfg.token_keys, self.cfg.audience)
        last = frame.get("last_seq", 0)
        if not isinstance(last, int) or last < 0:
            raise FrameError("last_seq must be an integer >= 0")
        return claims["sub"], last

    async def _read(self, app: AppConnection) -> None:
        window, count = time.monotonic(), 0
        async for raw in app.ws:
            now = time.monotonic()
            if now - window >= 1.0:
                window, count = now, 0
            count += 1
            if count > APP_FRAMES_PER_SECOND:
                await self._close(app, Close.RATE_LIMITED, "more than "
                                  f"{APP_FRAMES_PER_SECOND} frames a second")
                return
            try:
                frame = frames.parse_app_frame(raw)
            except FrameError as exc:
                await app.ws.send(frames.error("bad_frame", str(exc)).decode())
                continue
            kind = frame["type"]
            if kind == "ack":
                self._ack(app, frame["seq"])
            elif kind == "send":
                await self._send(app, frame)
            elif kind == "bye":
                await self._close(app, Close.NORMAL, "bye")
                return

    def _ack(self, app: AppConnection, seq: Any) -> None:
        if isinstance(seq, int) and seq > app.acked:
            app.acked = seq
            self.endpoint.ack_to(app.address, seq)

    async def _send(self, app: AppConnection, frame: dict) -> None:
        app_id = frame["id"]
        try:
            cls = MsgClass[str(frame.get("class", "ORDER")).upper()]
        except KeyError:
            await app.ws.send(frames.error("bad_class", f"class {frame.get('class')!r}").decode())
            return
        target, channel = str(frame["to"]), bool(frame.get("channel", False))
        if not may_send(app.address, cls, target, channel):
            await app.ws.send(frames.receipt(app_id, Status.REFUSED, "FORBIDDEN").decode())
            return
        data = frame["data"]  # the app's address goes with it: nobody speaks for another
        body = {**data, "from": app.address} if isinstance(data, dict) \
            else {"from": app.address, "data": data}
        callback = (lambda r, a=app, i=app_id: self._receipt(a, i, r))
        try:
            await self.endpoint.send(target, orjson.dumps(body), kind=str(frame["kind"]),
                                     msg_class=cls, channel=channel,
                                     order=str(frame.get("order", "")),
                                     key=app.address if cls == MsgClass.LOCATION else "",
                                     callback=callback if cls <= MsgClass.CHAT else None)
        except ValueError as exc:
            await app.ws.send(frames.receipt(app_id, Status.REFUSED, "BAD_ADDRESS").decode())
            log.info("app %s: send refused: %s", app.address, exc)
            return
        self.metrics.messages_in.inc()

    def _receipt(self, app: AppConnection, app_id: Any, r) -> None:
        if not app.closed:
            code = r.code.name if r.code else "NONE"
            asyncio.create_task(self._safe_send(app, frames.receipt(app_id, r.status, code)))

    async def _safe_send(self, app: AppConnection, frame: bytes) -> None:
        try:
            await app.ws.send(frame.decode())
        except ConnectionClosed:
            pass

    async def _close(self, app: AppConnection, code: Close, why: str) -> None:
        """Close one app with ``code``. An app that does not read cannot take the close
        frame either (websockets waits for the socket to drain, without a limit): after
        CLOSE_TIMEOUT_S its connection is aborted."""
        if app.closed:
            return
        app.stop()
        self.metrics.closed.labels(code.name.lower()).inc()
        try:
            await asyncio.wait_for(app.ws.close(int(code), why[:120]), CLOSE_TIMEOUT_S)
        except ConnectionClosed:
            pass
        except asyncio.TimeoutError:
            app.ws.transport.abort()

    async def _leave(self, app: AppConnection) -> None:
        """The app is gone: its address is unbound unless another connection of the
        party took it over (what it did not ack waits at the router)."""
        app.closed = True
        self.metrics.connections.labels(app.kind).dec()
        self.metrics.shed.inc(app.shed + app.conflated)
        if self.apps.get(app.address) is app:
            del self.apps[app.address]
            await self.endpoint.unbind([app.address])

    # ---- HTTP: the web apps and demo tokens ----------------------------------------------

    def http(self, connection: ServerConnection, request: Request) -> Response | None:
        """Non-WebSocket requests: the pages, their assets, and (demo) tokens."""
        path = request.path.split("?", 1)[0]
        if path == "/ws":
            return None  # the WebSocket handshake goes on
        if path == "/token" and self.cfg.demo_tokens:
            return self._demo_token(request.path)
        name = PAGES.get(path, path.lstrip("/"))
        f = (WEB / name).resolve()
        if WEB.resolve() not in f.parents or not f.is_file():
            return _response(404, b"not found\n", "text/plain")
        kind = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
        return _response(200, f.read_bytes(), kind)

    def _demo_token(self, path: str) -> Response:
        from urllib.parse import parse_qs, urlsplit
        address = parse_qs(urlsplit(path).query).get("address", [""])[0]
        try:
            token = tokens.issue(address, 3600, self.cfg.token_keys, self.cfg.audience)
        except tokens.TokenError as exc:
            return _response(400, f"{exc}\n".encode(), "text/plain")
        return _response(200, orjson.dumps({"token": token}), "application/json")


def _response(status: int, body: bytes, content_type: str) -> Response:
    headers = Headers({"Content-Type": content_type, "Content-Length": str(len(body)),
                       "Cache-Control": "no-store"})
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
    return Response(status, reason, headers, body)


async def run(cfg: GatewayConfig, host: str, port: int, metrics_port: int = 0,
              ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or forever)."""
    gw = Gateway(cfg)
    await gw.start()
    ops = httpd.serve(metrics_port, "127.0.0.1", gw.metrics.registry, gw.health) \
        if metrics_port else None
    try:
        async with serve(gw.handle, host, port, process_request=gw.http,
                         ping_interval=None,  # Gateway._watch pings all apps
                         close_timeout=CLOSE_TIMEOUT_S,
                         max_size=frames.MAX_APP_FRAME, compression=None) as server:
            bound = server.sockets[0].getsockname()[1]
            log.info("gateway serving apps on ws://%s:%d/ws (web apps on http://%s:%d/), "
                     "router %s", host, bound, host, bound, cfg.router)
            gw.port = bound  # type: ignore[attr-defined]
            if ready is not None:
                ready.set()
            await (stop.wait() if stop is not None else asyncio.Future())
            await gw.close_apps()  # before the server's own close, which is unbounded
    finally:
        await gw.stop()
        if ops:
            ops.close()
