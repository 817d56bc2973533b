"""The router process: one ROUTER socket, the native core, logging and lifecycle.

:class:`Router` is plain Python that owns the native :class:`router.core.Core`, the way
asyncpg's Connection owns its protocol: sockets, options and the serve loop's housekeeping
live here; the per-message path lives in ``ext/core.pyx``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import NamedTuple

import orjson
import zmq

from . import core as _native
from . import httpd, libzmq_check, storage
from .broker import Broker
from .config import Settings
from .history import History, HistoryWriter
from .httpd import Health
from .journal import Fenced
from .lease import Lease, LeaseLost, default_node_id
from .storage import Recovery
from .trust import Trust, may_see_order, visible_addresses
from .lograte import RateLimitedLog
from .protocol import ErrorCode, Role, Status

log = logging.getLogger("router")

#: How long one native run() call may serve before returning to Python (ms).
SLICE_MS = 100
#: Seconds between returns of freed heap memory to the system (malloc_trim).
TRIM_SECONDS = 10.0
#: TCP keepalive of accepted connections: a peer whose host vanished (no FIN, no RST)
#: is closed after about IDLE + INTVL * CNT seconds of silence on the wire.
KEEPALIVE_IDLE_S, KEEPALIVE_INTVL_S, KEEPALIVE_CNT = 30, 5, 3


def _find_malloc_trim():
    """glibc's malloc_trim, or None (another libc): after a flood the freed buffers
    of a thousand connections stay in the heap unless they are handed back."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _find_malloc_trim()



class PeerEvent(NamedTuple):
    """One of Core.drain_events()'s tuples, by name. ``detail``: for a disconnect the
    reason ("bye", "heartbeat timeout", "unreachable"); for a takeover "<address> by
    <new holder>"; for an error its ErrorCode number."""

    kind: str  # connect, disconnect, error, storage, takeover
    name: str
    role: int
    identity: bytes
    detail: str | int
    naddrs: int

class StandbyStopped(Exception):
    """The router was stopped while it waited as a standby (nothing to serve)."""


class Router:
    """A running router: bind, then :meth:`serve` until :meth:`stop` or a signal."""

    __slots__ = ("settings", "context", "socket", "core", "endpoints", "store", "history",
                 "recovery", "broker", "metrics", "health", "_ops", "_stop", "_last_summary",
                 "_last_stats", "_logs", "_history_reader", "_last_trim", "peer_ids_honoured",
                 "trust", "_reload", "lease", "lease_lost")

    def __init__(self, settings: Settings, context: zmq.Context | None = None) -> None:
        self.settings = settings.validate()
        self.context = context or zmq.Context.instance()
        self.trust = Trust(self.settings, self.context)  # before the socket: it secures it
        self._reload = threading.Event()
        self._stop = threading.Event()
        self.socket = self._make_socket()
        self.endpoints: list[str] = []
        #: Whether the loaded libzmq gives a connection the routing id its peer chose
        #: (stock) or always one of the ROUTER's own (hardened); None: the probe failed.
        self.peer_ids_honoured = self._probe_peer_ids()
        data = Path(settings.data_dir)
        self.store = storage.open_store(settings, data)
        self.lease_lost: LeaseLost | None = None
        self.lease = self._make_lease()
        # Written on a thread of its own; queries read through their own connection.
        self.history = HistoryWriter(data / "history.db", settings.history_days) \
            if settings.history else None
        self._history_reader: History | None = None
        self.core = _native.Core(
            self.socket,
            max_payload=settings.max_payload,
            window=settings.window,
            max_queue=settings.max_queue,
            max_queued=settings.max_queued,
            max_queued_per_sender=settings.max_queued_per_sender,
            max_addresses=settings.max_addresses,
            max_peers=settings.max_peers,
            heartbeat_ms=settings.heartbeat_ms,
            liveness=settings.liveness,
            errors_per_second=settings.errors_per_second,
            store=self.store,
            dedup_ms=int(settings.dedup_seconds * 1000),
            retry_ms=settings.retry_ms,
            retry_max_ms=settings.retry_max_ms,
            max_attempts=settings.max_attempts,
            batch=settings.commit_batch,
            dedup_capacity=settings.dedup_capacity,
            address_idle_ms=int(settings.address_idle_seconds * 1000),
            channel_idle_ms=int(settings.channel_idle_seconds * 1000),
        )
        self.trust.apply(self.core)  # before anyone can connect
        # Ops endpoint first, so /healthz and /readyz (503) answer during a long replay.
        self.health = Health()
        self.metrics, self._ops = None, None
        if settings.metrics_port:
            self._serve_ops()
        try:
            self._lead()  # a standby waits here, /readyz 503, until the lease is its
            # Replay before binding: nobody connects to a router that is still recovering.
            self.recovery = storage.recover(self.store, self.core) if self.store else Recovery()
            self._bind(settings.bind)
        except BaseException:
            self._close_ops()
            raise
        self.broker = Broker(self.core.send, {"router.history": self._history_query,
                                           "router.presence": self._presence_query},
                             errors_per_second=settings.errors_per_second)
        # One budget per kind of peer event, so a storm of one kind hides no other kind.
        self._logs = {kind: RateLimitedLog(log, what) for kind, what in (
            ("connect", "peer connected"), ("disconnect", "peer disconnected"),
            ("takeover", "address taken over"), ("refusal", "refused request"),
            ("history", "history events dropped"))}
        self._last_trim = time.monotonic()
        self._last_summary = time.monotonic()
        self._last_stats = self.core.stats()

    def _serve_ops(self) -> None:
        """/metrics, /healthz and /readyz on metrics_host:metrics_port (router/httpd.py)."""
        from .metrics import registry_for

        s = self.settings
        registry, self.metrics = registry_for(self.snapshot, s.data_dir,
                                              self.peer_ids_honoured, self.lease)
        try:
            self._ops = httpd.serve(s.metrics_port, s.metrics_host, registry, self.health)
        except OSError as exc:
            self.socket.close(linger=0)
            raise OSError(f"cannot serve metrics on {s.metrics_host}:{s.metrics_port}: {exc}; "
                          "is another process on that port? Choose another --metrics-port"
                          ) from exc

    def _close_ops(self) -> None:
        if self._ops:
            self._ops.close()
            self._ops = None

    @staticmethod
    def _probe_peer_ids() -> bool | None:
        """Ask the loaded libzmq once (router/libzmq_check.py, well under a second)."""
        try:
            return libzmq_check.honours_peer_routing_ids()
        except (libzmq_check.ProbeError, zmq.ZMQError) as exc:
            log.warning("could not tell whether libzmq accepts client-chosen routing ids: "
                        "%s", exc)
            return None

    def _bind(self, endpoints: list[str]) -> None:
        for endpoint in endpoints:
            try:
                self.socket.bind(endpoint)
            except zmq.ZMQError as exc:
                self.socket.close(linger=0)
                raise OSError(f"cannot bind {endpoint}: {exc}; is another router there?") from exc
            self.endpoints.append(self.socket.getsockopt_string(zmq.LAST_ENDPOINT))

    def _make_socket(self) -> zmq.Socket:
        s = self.settings
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        # Unroutable sends fail (EHOSTUNREACH) instead of vanishing, and a full pipe
        # says EAGAIN, so the core keeps the message queued for that peer.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # No handover by routing id: ids are the router's (a peer that picks its own
        # cannot take another's connection); a reconnecting client gets a new id and
        # moves its addresses with HELLO (docs/PROTOCOL.md, "Connections and routing ids").
        sock.setsockopt(zmq.ROUTER_HANDOVER, 0)
        sock.setsockopt(zmq.SNDHWM, s.sndhwm)
        sock.setsockopt(zmq.RCVHWM, s.rcvhwm)
        if s.rcvhwm:
            log.warning("rcvhwm %d: a connection that reaches it stops being read, and "
                        "libzmq 4.3.5 can abort the router when such a connection is then "
                        "closed by its peer; 0 (the default) avoids it", s.rcvhwm)
        # No ZMTP heartbeats on this socket: in libzmq 4.3.5 the heartbeat timer writes
        # to a connection whose input stopped at RCVHWM and whose peer then hung up,
        # and the process aborts (assertion !_io_error, stream_engine_base.cpp:310);
        # any peer can bring that about (tests/test_hostile.py reproduces it). Liveness
        # is the protocol's own heartbeat (HEARTBEAT, liveness, EHOSTUNREACH on send);
        # TCP keepalive, in the kernel, closes connections whose far end vanished.
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, KEEPALIVE_IDLE_S)
        sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, KEEPALIVE_INTVL_S)
        sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, KEEPALIVE_CNT)
        # A hard ceiling well above the payload cap: the core answers TOO_LARGE for
        # payloads between the two; beyond it libzmq drops the connection.
        sock.setsockopt(zmq.MAXMSGSIZE, s.max_payload * 4 + (1 << 20))
        self.trust.secure(sock)  # CURVE and the ZAP handler, when there are credentials
        return sock

    def serve(self, install_signals: bool = True) -> None:
        """Run until stop() or SIGTERM/SIGINT; then close the socket."""
        if install_signals:
            self._install_signals()
        self._log_recovery()
        log.info("router serving on %s (native core on %s)", ", ".join(self.endpoints),
                 _native.libzmq_path())
        self.trust.announce(self.endpoints)
        if self.peer_ids_honoured:
            log.warning(libzmq_check.WARNING)
        if self.metrics:
            log.info("metrics on http://%s:%d/metrics (health: /healthz, /readyz)",
                     self.settings.metrics_host, self.settings.metrics_port)
        next_housekeeping = 0.0
        if self.metrics:
            self.metrics.refresh(force=True)  # a ready router has figures, not just versions
        self.health.set_ready(not self._stop.is_set())  # journal replayed, socket bound
        try:
            while not self._stop.is_set():
                self.health.beat()
                try:
                    self.core.run(SLICE_MS)  # returns early when service traffic arrived
                except _native.LeaseExpired:
                    self._on_lease_lost(LeaseLost("the lease ran out before it was renewed"))
                    break
                self._on_peer_events()  # connects first: the broker learns roles before READYs
                for identity, header, payload, principal in self.core.drain_broker():
                    self._to_broker(identity, header, payload, principal)
                if self._reload.is_set():
                    self._reload.clear()
                    self.trust.reload(self.core)
                if time.monotonic() >= next_housekeeping:
                    next_housekeeping = time.monotonic() + SLICE_MS / 1000
                    self._housekeeping()
        finally:
            self._housekeeping()
            self._summary(final=True)
            self.socket.close(linger=0)
            if self.store:
                self.store.close()
            if self.history:
                self.history.close()
            if self._history_reader:
                self._history_reader.close()
            self.trust.stop()
            if self.lease and self.lease_lost is None:
                self.lease.release()  # a clean stop: the standby need not wait it out
            self._close_ops()  # last: /readyz says 503 (stopping) until the port closes
        if self.lease_lost is not None:
            raise self.lease_lost

    def _to_broker(self, identity: bytes, header: bytes, payload: bytes,
                   principal: int) -> None:
        """Hand one service command to the broker. The broker answers bad input with an
        ERROR itself; anything else it raises is a bug on one peer's input, logged with
        the peer, never allowed to stop the routing for everyone."""
        try:
            self.broker.handle(identity, header, payload, self.trust.principal(principal))
        except Exception:
            log.exception("service command from %s failed (header %s); routing goes on",
                          identity.hex(), header[:32].hex())

    def _housekeeping(self) -> None:
        """Between slices: logs, journal maintenance, order history, summaries. A
        failure here (a full disk under the history database, say) is logged, never
        allowed to stop the routing."""
        self._on_peer_events()
        for limited in self._logs.values():
            limited.flush()
        self.broker.tick()
        self.broker.reap(self.core.peer_alive)
        blob = self.core.drain_history()
        for what, step in (("journal maintenance", self._maintain_store),
                           ("order history", lambda: self._record_history(blob)),
                           ("metrics snapshot", self._refresh_metrics)):
            try:
                step()
            except Exception:
                log.exception("%s failed; routing goes on", what)
        self._maybe_summary()
        self._maybe_trim()

    def _maybe_trim(self) -> None:
        if _malloc_trim is not None and time.monotonic() - self._last_trim >= TRIM_SECONDS:
            self._last_trim = time.monotonic()
            _malloc_trim(0)

    def _make_lease(self) -> Lease | None:
        """The leadership lease of a router on a shared (Redis) store."""
        if not self.settings.store:
            return None
        return Lease(self.store.client, self.settings.store_prefix,
                     self.settings.node_id or default_node_id(), self.settings.lease_ms)

    def _lead(self) -> None:
        """On a shared store: wait as a standby until this router holds the lease,
        then fence the store's writes and the core's sends by it and keep renewing."""
        if self.lease is None:
            return
        log.info("node %s: waiting for the lease on %s (standby until then)",
                 self.lease.node, self.settings.store)
        if not self.lease.acquire(self._stop, on_wait=lambda holder: log.info(
                "standby: %s holds the lease; taking over when it lapses", holder)):
            raise StandbyStopped("stopped while waiting for the lease")
        self.store.token = self.lease.token
        self.core.set_lease_until(self.lease.valid_until)
        log.info("node %s: leading with epoch %d (lease %s)", self.lease.node,
                 self.lease.epoch, self.lease.token)
        self.lease.keep(self.core.set_lease_until, self._on_lease_lost)

    def _on_lease_lost(self, exc: LeaseLost) -> None:
        """Another router leads now (or may): send nothing more and stop."""
        if self.lease_lost is None:
            self.lease_lost = exc
            self.core.set_lease_until(1e-3)  # past: the core sends nothing from now
            log.error("lease lost: %s; stopping (the standby serves now)", exc)
            self.stop()

    def _maintain_store(self) -> None:
        if self.store:
            storage.maintain(self.store, self.core)

    def _record_history(self, blob: bytes) -> None:
        if self.history and not self.history.submit(blob):
            self._logs["history"].log(logging.WARNING, "order history writer is behind "
                                      "(%d bytes waiting): events dropped",
                                      self.history.pending_bytes)

    def _refresh_metrics(self) -> None:
        if self.metrics:
            self.metrics.refresh()

    def _log_recovery(self) -> None:
        r = self.recovery
        if not self.store:
            log.warning("journal off: reliable messages live in memory only")
            return
        log.info("journal %s: %d segments, %d records, %d messages pending, %.2fs",
                 getattr(self.store, "dir", self.settings.store), r.segments, r.records,
                 r.messages, r.seconds)
        for line in r.dropped:
            log.error("journal damaged, recovered the good prefix: %s", line)

    def stop(self) -> None:
        """Ask serve() to return after its current slice; /readyz answers 503 from now."""
        self.health.stopping()
        self._stop.set()

    def stats(self) -> dict:
        """Native counters and table sizes (see Core.stats)."""
        return self.core.stats()

    def _history_query(self, payload: bytes, principal=None) -> bytes:
        """router.history: an order id -> its timeline (JSON list, payloads as text),
        for a principal whose history scope covers the order."""
        if self.history is None:
            raise ValueError("order history is off on this router (--history false)")
        if self._history_reader is None:
            self._history_reader = History(self.history.path, self.settings.history_days)
        events = self._history_reader.timeline(payload.decode().strip())
        if not may_see_order(principal, events):
            raise PermissionError("this order is not one your credentials let you read "
                                  "(history scope: own orders only, or none)")
        for e in events:
            if e["payload"] is not None:
                e["payload"] = bytes(e["payload"]).decode(errors="replace")
        return orjson.dumps(events)

    def _presence_query(self, payload: bytes, principal=None) -> bytes:
        """router.presence: JSON list of addresses -> {address: online since (epoch s)
        or null}; an empty list asks for every online address."""
        try:
            wanted = orjson.loads(payload or b"[]")
        except orjson.JSONDecodeError:
            wanted = None
        if not isinstance(wanted, list) or not all(isinstance(a, str) for a in wanted):
            raise ValueError('the request payload must be a JSON list of addresses, '
                             'e.g. ["rider:42", "user:7"], or [] for every online address')
        if principal is not None and principal.presence == "none":
            raise PermissionError("your credentials do not allow presence queries")
        online = visible_addresses(principal, self.core.online())
        if not wanted:
            return orjson.dumps(online)
        if principal is not None:
            wanted = [a for a in wanted if visible_addresses(principal, {a: 0})]
        return orjson.dumps({a: online.get(a) for a in wanted})

    def _install_signals(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            """SIGTERM/SIGINT: finish the current slice, then stop."""
            log.info("received %s, stopping", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        # SIGHUP: re-read the credentials between slices (router/trust.py)
        signal.signal(signal.SIGHUP, lambda signum, frame: self._reload.set())

    def _on_peer_events(self) -> None:
        """What the core saw happen to peers since the last slice: the broker learns of
        workers and clients coming and going, then the events are logged."""
        for ev in map(PeerEvent._make, self.core.drain_events()):
            if ev.kind == "connect":
                self.broker.peer_connected(ev.identity, ev.role)
            elif ev.kind == "disconnect":
                self.broker.peer_gone(ev.identity)
            self._log_event(ev)

    def _log_event(self, ev: "PeerEvent") -> None:
        logs = self._logs
        role_name = Role(ev.role).name.lower() if ev.role else "unknown"
        who = ev.name or ev.identity.hex()
        if ev.kind == "connect":
            logs["connect"].log(logging.INFO, "peer connected: %s (%s, %d addresses)",
                                ev.name, role_name, ev.naddrs)
        elif ev.kind == "disconnect":
            logs["disconnect"].log(logging.INFO, "peer disconnected: %s (%s, %s)",
                                   who, role_name, ev.detail)
        elif ev.kind == "takeover":
            logs["takeover"].log(logging.WARNING, "address taken over: %s (was held by "
                                 "%s); the old holder was told with ADDRESS_TAKEN",
                                 ev.detail, who)
        elif ev.kind == "storage":
            log.error("journal commit failed, sends refused with STORAGE_FAILED: %s",
                      self.core.store_error)
            if isinstance(self.core.store_error, Fenced):
                self._on_lease_lost(LeaseLost(str(self.core.store_error)))
        else:
            logs["refusal"].log(logging.WARNING, "refused request from %s: %s",
                                who, ErrorCode(ev.detail).name)

    def snapshot(self) -> dict:
        """Everything the metrics collector exports, read in one go between slices:
        the core's counters and gauges, the broker's, the journal's and history's."""
        snap = self.core.metrics()
        snap["broker"] = self.broker.stats()
        zap = self.trust.zap
        snap["zap"] = {"accepted": zap.accepted, "refused": dict(zap.refused)} if zap else None
        snap["journal_bytes"] = self.store.total_bytes if self.store else 0
        h = self.history
        snap["history"] = (h.written, h.dropped, h.failures, h.pending_bytes, h.size_bytes,
                           h.pruned) if h else None
        return snap

    def _maybe_summary(self) -> None:
        interval = self.settings.summary_interval
        if interval > 0 and time.monotonic() - self._last_summary >= interval:
            self._summary()

    def _summary(self, final: bool = False) -> None:
        now = time.monotonic()
        st = self.core.stats()
        dt = max(now - self._last_summary, 1e-9)
        prev = self._last_stats
        rate_in = (sum(st["msgs_in"]) - sum(prev["msgs_in"])) / dt
        rate_out = (sum(st["msgs_out"]) - sum(prev["msgs_out"])) / dt
        passes = st["loops"] - prev["loops"]
        log.info(
            "%s: in %.0f/s out %.0f/s (%.1f per loop pass), peers %d, addresses %d, "
            "channels %d, queued %d, delivered %d, refused %d, expired %d, shed %d, errors %d",
            "final" if final else "summary", rate_in, rate_out,
            (rate_in * dt / passes) if passes else 0.0, st["peers"], st["addresses"],
            st["channels"], st["queued"], st["receipts"][Status.DELIVERED],
            st["receipts"][Status.REFUSED],
            st["expired"], st["shed"], sum(st["errors"].values()),
        )
        self._last_summary, self._last_stats = now, st
