"""Prometheus metrics of the router: native counters exported at scrape time.

The hot path only increments C counters and histogram buckets (ext/core.pyx). Between
loop slices the router thread takes a snapshot (:meth:`RouterCollector.refresh`, twice a
second); the queue gauges come from a walk over the address table that advances at most
100,000 addresses per snapshot, so a huge table is summed over several seconds rather
than stalling the loop. The HTTP thread (router/httpd.py) serves the latest snapshot, so
a scrape never touches the core while it runs and never waits for it.

Names follow Prometheus conventions: ``router_`` prefix, base units, ``_total`` for
counters, ``_seconds``/``_bytes``; labels are bounded sets (class, status, role, kind,
code, service, outcome), never an address or order id. Every value of a bounded label
is exported from the start (0 until it happens), so a panel or an alert never waits for
the first occurrence. docs/METRICS.md lists every family; tests/test_observability.py
checks the list against a real scrape.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Iterator

import zmq
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric,
)

from . import __version__
from . import core as _native
from .httpd import process_registry
from .protocol import RELIABLE_CLASSES, ErrorCode, MsgClass, Status

#: Bucket upper bounds (seconds) of the native histograms: the core's own table.
BOUNDS = _native.histogram_bounds()
#: Seconds between snapshots of the core (a scrape sees data at most this old; twice a
#: second, so consecutive once-a-second scrapes never see the same snapshot).
REFRESH_SECONDS = 0.5
#: Error codes as label values: every code but NONE, each exported from the start.
CODES = [c for c in ErrorCode if c != ErrorCode.NONE]
#: The broker's request outcomes: label value -> its counter key in Broker.stats().
SERVICE_OUTCOMES = {"replied": "replies", "expired": "expired", "no_service": "no_service",
                    "failed": "failed", "queue_full": "queue_full"}


def _buckets(counts: list[int], bounds: list[float]) -> list[tuple[str, float]]:
    """Non-cumulative native counts -> cumulative Prometheus buckets (last is +Inf)."""
    if len(counts) != len(bounds) + 1:
        raise ValueError(f"{len(counts)} bucket counts for {len(bounds)} bounds: the core's "
                         "metrics() and histogram_bounds() disagree; rebuild the core")
    out, total = [], 0
    for bound, n in zip(bounds + [float("inf")], counts):
        total += n
        out.append(("+Inf" if bound == float("inf") else repr(bound), total))
    return out


def _label(enum_member) -> str:
    return enum_member.name.lower()


def build_info() -> dict[str, str]:
    """Versions the running router is built from (the labels of router_build_info)."""
    return {"version": __version__, "pyzmq": zmq.__version__,
            "libzmq": ".".join(map(str, _native.libzmq_version())),
            "cython": _native.cython_version()}


class RouterCollector:
    """Collects from the latest snapshot ``take_snapshot()`` returned (the router passes
    :meth:`router.server.Router.snapshot`).

    Until the router's loop takes its first snapshot (journal replay) it exports only
    build info and disk space: no half-initialised figures.
    """

    def __init__(self, take_snapshot: Callable[[], dict], data_dir: str,
                 peer_ids_honoured: bool | None = None, lease=None) -> None:
        self._take_snapshot = take_snapshot
        self._lease = lease
        self._peer_ids_honoured = peer_ids_honoured
        self._data_dir = data_dir
        self._snapshot: dict | None = None
        self._taken = 0.0
        self._info = build_info()

    def refresh(self, force: bool = False) -> None:
        """Take a snapshot; call from the router's thread between slices."""
        now = time.monotonic()
        if not force and now - self._taken < REFRESH_SECONDS:
            return
        self._snapshot, self._taken = self._take_snapshot(), now

    def describe(self) -> list:
        """No fixed description: prometheus_client then does not collect at registration."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every router metric family, from the latest snapshot."""
        fam = GaugeMetricFamily("router_build_info", "versions the router runs: always 1",
                                labels=list(self._info))
        fam.add_metric(list(self._info.values()), 1)
        yield fam
        if self._peer_ids_honoured is not None:  # None: the startup probe failed
            yield GaugeMetricFamily(
                "router_libzmq_peer_chosen_ids",
                "1: the loaded libzmq gives a connection the routing id its peer chose "
                "(stock; a hostile peer can exhaust memory or abort the router: run "
                "scripts/build-hardened-libzmq); 0: ids are always the router's",
                value=int(self._peer_ids_honoured))
        yield from self._disk()
        if self._lease is not None:
            yield from self._leadership(self._lease)
        s = self._snapshot
        if s is None:
            return
        yield from self._traffic(s)
        yield from self._outcomes(s)
        yield from self._errors(s)
        yield from self._state(s)
        yield from self._peers(s)
        yield from self._latency(s)
        yield from self._journal(s)
        yield from self._history(s["history"])
        yield from self._services(s["broker"])
        yield from self._trust(s)

    def _leadership(self, lease) -> Iterator[Metric]:
        """Read from the lease directly: a standby has no snapshot, and says so."""
        leading = bool(lease.token) and time.monotonic() < lease.valid_until
        yield GaugeMetricFamily("router_lease_leader", "1: this router holds the store's "
                                "lease and serves; 0: a standby (or it lost the lease)",
                                value=int(leading))
        yield GaugeMetricFamily("router_lease_epoch", "the epoch this router leads under "
                                "(0: it has not led)", value=lease.epoch)
        yield GaugeMetricFamily("router_lease_seconds_left", "seconds of lease this router "
                                "trusts it has left (0 for a standby)",
                                value=max(lease.valid_until - time.monotonic(), 0.0)
                                if leading else 0.0)

    def _trust(self, s: dict) -> Iterator[Metric]:
        """The trust boundary (router/trust.py): handshakes, revocations, rate refusals.
        FORBIDDEN refusals are in router_errors{code="FORBIDDEN"}."""
        yield CounterMetricFamily("router_rate_exceeded", "SENDs refused with RATE_EXCEEDED: "
                                  "their principal's rate budget was spent",
                                  value=s["rate_exceeded"])
        yield CounterMetricFamily("router_revoked_connections", "connections revoked by a "
                                  "credentials reload (ERROR REVOKED, then closed)",
                                  value=s["revoked"])
        zap = s.get("zap") or {"accepted": 0, "refused": {}}  # open router: no ZAP
        fam = CounterMetricFamily("router_handshakes", "ZAP decisions on new connections, "
                                  "by outcome", labels=["outcome"])
        fam.add_metric(["accepted"], zap["accepted"])
        for reason, n in zap["refused"].items():
            fam.add_metric([f"refused: {reason}"], n)
        yield fam

    def _disk(self) -> Iterator[Metric]:
        """Free space of the data directory's filesystem (journal and history live there);
        read at scrape time, in the HTTP thread: statvfs does not touch the core."""
        try:
            st = os.statvfs(self._data_dir)
        except OSError:
            return  # no data dir (removed under the router): the series' absence says so
        yield GaugeMetricFamily(
            "router_journal_disk_free_bytes",
            "bytes available to the router on the data directory's filesystem",
            value=st.f_bavail * st.f_frsize)

    def _traffic(self, s: dict) -> Iterator[Metric]:
        for name, key, doc in (
                ("router_messages_received", "msgs_in", "SENDs accepted, by message class"),
                ("router_messages_delivered", "msgs_out",
                 "DELIVER frames sent (fan-out and redeliveries included), by class")):
            fam = CounterMetricFamily(name, doc, labels=["class"])
            for cls in MsgClass:
                fam.add_metric([_label(cls)], s[key][cls])
            yield fam
        for name, key, doc in (
                ("router_fanout_deliveries", "fanout", "extra deliveries made by channel fan-out"),
                ("router_bytes_received", "bytes_in", "payload bytes received"),
                ("router_bytes_sent", "bytes_out", "payload bytes delivered"),
                ("router_acks_received", "acks_in", "message acks received from recipients")):
            yield CounterMetricFamily(name, doc, value=s[key])

    def _outcomes(self, s: dict) -> Iterator[Metric]:
        fam = CounterMetricFamily("router_receipts", "receipts issued, by status",
                                  labels=["status"])
        for status in Status:
            fam.add_metric([_label(status)], s["receipts"][status])
        yield fam
        for name, key, doc in (
                ("router_redeliveries", "redeliveries",
                 "messages sent again for lack of an ack (one per message resent)"),
                ("router_dedup_hits", "dedup_hits", "repeated message ids not delivered again"),
                ("router_conflated", "conflated", "locations replaced by a newer one"),
                ("router_shed", "shed", "best-effort messages dropped for space"),
                ("router_expired", "expired", "messages whose TTL passed before delivery"),
                ("router_receipts_dropped", "receipts_dropped",
                 "receipts not sent: the sender was gone or its pipe full"),
                ("router_blocked_sends", "blocked_sends",
                 "sends to a peer whose pipe was full (EAGAIN): the message stays queued"),
                ("router_pack_window_full", "pack_window_full",
                 "DELIVERs sent alone to a peer that asked for packs: it had PACK_WINDOW "
                 "packs unread")):
            yield CounterMetricFamily(name, doc, value=s[key])
        for name, doc, prefix in (
                ("router_packs", "PACK frames (docs/PROTOCOL.md, PACK)", "packs"),
                ("router_packed_messages", "commands carried in PACK frames", "packed")):
            fam = CounterMetricFamily(name, doc, labels=["direction"])
            fam.add_metric(["in"], s[prefix + "_in"])
            fam.add_metric(["out"], s[prefix + "_out"])
            yield fam

    def _errors(self, s: dict) -> Iterator[Metric]:
        # The core answers routing commands, the broker service commands (READY, REQUEST,
        # REPLY); both count every ERROR they decide, before their per-peer rate limit.
        # The core counts the RATE_LIMITED notice among its errors and the error it
        # replaced as suppressed; the broker counts the notices apart: same sums here.
        b = s["broker"]
        errors = dict(s["errors"])
        for code, n in b["errors"].items():
            errors[code] = errors.get(code, 0) + n
        errors[ErrorCode.RATE_LIMITED] = errors.get(ErrorCode.RATE_LIMITED, 0) \
            + b["errors_rate_limited"]
        fam = CounterMetricFamily("router_errors", "ERRORs decided, by code (counted before "
                                  "the per-peer rate limit)", labels=["code"])
        for code in CODES:
            fam.add_metric([_label(code)], errors.get(code, 0))
        yield fam
        yield CounterMetricFamily(
            "router_errors_suppressed", "ERRORs not sent because of the per-peer rate limit",
            value=s["errors_suppressed"] + b["errors_suppressed"] + b["errors_rate_limited"])
        yield CounterMetricFamily(
            "router_quarantined_messages", "messages ignored unread: their connection sent "
            "more than errors_per_second faulty messages this second",
            value=s["quarantined"])
        fam = CounterMetricFamily("router_receipts_refused", "REFUSED receipts, by error code",
                                  labels=["code"])
        for code in CODES:
            fam.add_metric([_label(code)], s["refused"].get(code, 0))
        yield fam

    def _state(self, s: dict) -> Iterator[Metric]:
        fam = GaugeMetricFamily("router_queued_messages", "messages held, by kind",
                                labels=["kind"])
        for kind, n in s["queued_by_kind"].items():
            fam.add_metric([kind], n)
        yield fam
        yield GaugeMetricFamily("router_offline_backlog_messages",
                                "reliable messages held for addresses nobody has bound",
                                value=s["offline_backlog"])
        yield GaugeMetricFamily("router_offline_addresses",
                                "addresses holding reliable messages that nobody has bound",
                                value=s["offline_addresses"])
        yield GaugeMetricFamily("router_oldest_queued_message_age_seconds",
                                "age of the oldest message held in any queue (0: none)",
                                value=s["oldest_queued_us"] / 1e6)
        yield GaugeMetricFamily("router_bound_addresses", "addresses bound to a connection",
                                value=s["bound_addresses"])
        yield GaugeMetricFamily("router_addresses", "addresses in the table (idle ones are "
                                "reclaimed: see router_addresses_reclaimed)",
                                value=s["addresses"])
        yield CounterMetricFamily("router_addresses_created", "addresses created (first use "
                                  "of a name, or of a name reclaimed before)",
                                  value=s["addresses_created"])
        yield CounterMetricFamily("router_addresses_reclaimed", "idle addresses reclaimed: "
                                  "nothing queued, unbound, in no channel",
                                  value=s["addresses_reclaimed"])
        yield GaugeMetricFamily("router_channels", "channels open", value=s["channels"])
        yield CounterMetricFamily("router_channels_closed_idle", "channels closed after "
                                  "channel_idle_seconds without use",
                                  value=s["channels_closed_idle"])
        yield GaugeMetricFamily("router_sender_names", "sender names interned (dedup keys)",
                                value=s["sender_names"])
        yield GaugeMetricFamily("router_reclaim_step_max_seconds", "longest reclaim step of a "
                                "loop tick (addresses, channels, names, receipts) since the "
                                "previous snapshot", value=s["reclaim_max_us"] / 1e6)
        yield GaugeMetricFamily("router_dedup_entries", "message ids inside their dedup window",
                                value=s["dedup_entries"])
        yield GaugeMetricFamily("router_dedup_capacity", "slots of the dedup table (it doubles "
                                "at 3/4 full, moving entries a few per insert)",
                                value=s["dedup_capacity"])
        yield CounterMetricFamily("router_sender_names_reclaimed", "sender names forgotten: "
                                  "nobody sends as them, nothing queued, dedup window over",
                                  value=s["senders_reclaimed"])
        yield GaugeMetricFamily("router_address_limit", "max_addresses: beyond it, new "
                                "addresses are refused ADDRESS_LIMIT", value=s["address_limit"])
        yield GaugeMetricFamily("router_metrics_snapshot_age_seconds",
                                "how old the figures of this scrape are",
                                value=time.monotonic() - self._taken)

    def _peers(self, s: dict) -> Iterator[Metric]:
        fam = GaugeMetricFamily("router_peers", "connected peers, by role", labels=["role"])
        for role, n in s["peers_by_role"].items():
            fam.add_metric([role], n)
        yield fam
        yield CounterMetricFamily("router_peers_connected", "peers that said HELLO",
                                  value=s["peers_connected"])
        yield CounterMetricFamily("router_peers_lost", "peers dropped without BYE "
                                  "(heartbeat timeout)", value=s["peers_lost"])

    def _latency(self, s: dict) -> Iterator[Metric]:
        fam = HistogramMetricFamily(
            "router_hop_latency_seconds", "router receive to first DELIVER send, for "
            "recipients online when the message arrived", labels=["class"])
        for cls in MsgClass:
            fam.add_metric([_label(cls)], _buckets(s["hop"][cls], BOUNDS["hop"]),
                           s["hop_sum_us"][cls] / 1e6)
        yield fam
        for name, key, doc in (
                ("router_delivery_latency_seconds", "delivery",
                 "accepted to recipient ack, recipient online throughout (reliable classes)"),
                ("router_offline_delivery_latency_seconds", "delivery_offline",
                 "accepted to recipient ack, for messages that waited for an offline "
                 "recipient (reliable classes)")):
            fam = HistogramMetricFamily(name, doc, labels=["class"])
            for cls in sorted(RELIABLE_CLASSES):
                fam.add_metric([_label(cls)], _buckets(s[key][cls], BOUNDS["delivery"]),
                               s[f"{key}_sum_us"][cls] / 1e6)
            yield fam

    def _journal(self, s: dict) -> Iterator[Metric]:
        fam = HistogramMetricFamily("router_journal_commit_seconds", "journal group commit time")
        fam.add_metric([], _buckets(s["commit"], BOUNDS["commit"]), s["commit_sum_us"] / 1e6)
        yield fam
        yield CounterMetricFamily("router_journal_commits", "journal group commits",
                                  value=s["commits"])
        yield CounterMetricFamily("router_journal_commit_failures",
                                  "group commits the store refused", value=s["commit_failures"])
        yield GaugeMetricFamily("router_journal_bytes", "journal bytes on disk",
                                value=s["journal_bytes"])
        yield GaugeMetricFamily("router_journal_replayed_messages",
                                "messages recovered from the journal at start",
                                value=s["replayed"])

    def _history(self, h: tuple | None) -> Iterator[Metric]:
        if h is None:
            return  # --history false: no series rather than zeros that look healthy
        written, dropped, failures, pending, size, pruned = h
        yield CounterMetricFamily("router_history_events", "order history events written",
                                  value=written)
        yield CounterMetricFamily("router_history_dropped_batches",
                                  "batches of history events dropped: the writer was behind",
                                  value=dropped)
        yield CounterMetricFamily("router_history_write_failures",
                                  "batches the history database refused", value=failures)
        yield GaugeMetricFamily("router_history_pending_bytes",
                                "history event bytes waiting for the writer", value=pending)
        yield GaugeMetricFamily("router_history_bytes", "order history database size on disk",
                                value=size)
        yield CounterMetricFamily("router_history_pruned_events",
                                  "history events deleted past the retention (history_days)",
                                  value=pruned)

    def _services(self, b: dict) -> Iterator[Metric]:
        gauges = [("workers", GaugeMetricFamily(
                      "router_service_workers", "workers READY, by service", labels=["service"])),
                  ("waiting", GaugeMetricFamily(
                      "router_service_waiting_requests", "requests waiting for a worker",
                      labels=["service"])),
                  ("credit", GaugeMetricFamily(
                      "router_service_worker_credit", "free credit of READY workers: requests "
                      "they would take now", labels=["service"])),
                  ("busy", GaugeMetricFamily(
                      "router_service_busy_requests", "requests being handled by a worker",
                      labels=["service"]))]
        for name, svc in b["services"].items():
            for key, fam in gauges:
                fam.add_metric([name], svc[key])
        for _, fam in gauges:
            yield fam
        yield GaugeMetricFamily("router_service_unregistered_waiting_requests",
                                "requests waiting for a service no worker has registered yet",
                                value=b["unregistered_waiting"])
        fam = CounterMetricFamily("router_service_requests", "service requests, by outcome",
                                  labels=["outcome"])
        for outcome, key in SERVICE_OUTCOMES.items():
            fam.add_metric([outcome], b[key])
        yield fam
        yield CounterMetricFamily("router_service_late_replies",
                                  "REPLYs for requests already answered, expired or failed",
                                  value=b["late_replies"])
        fam = HistogramMetricFamily("router_service_request_seconds",
                                    "request arrival to reply")
        fam.add_metric([], _buckets(b["latency_buckets"], b["latency_bounds"]),
                       b["latency_sum"])
        yield fam


def registry_for(take_snapshot: Callable[[], dict], data_dir: str,
                 peer_ids_honoured: bool | None = None, lease=None,
                 ) -> tuple[CollectorRegistry, RouterCollector]:
    """A registry with the router's families and the process's own (CPU, memory, open
    files, start time, Python version and GC): what the router's /metrics serves.
    ``peer_ids_honoured``: the startup probe's answer (router/libzmq_check.py), exported
    as router_libzmq_peer_chosen_ids; None exports nothing. ``lease``: a router on a
    shared store (router/lease.py), exported as router_lease_* (standbys too)."""
    registry = process_registry()
    collector = RouterCollector(take_snapshot, data_dir, peer_ids_honoured, lease)
    registry.register(collector)
    return registry, collector
