"""Prometheus metrics of the router: native counters exported at scrape time.

The hot path only increments C counters and histogram buckets (ext/core.pyx). Between
loop slices the router thread takes a snapshot (:meth:`RouterCollector.refresh`, once a
second); the queue gauges come from a walk over the address table that advances at most
100,000 addresses per snapshot, so a huge table is summed over several seconds rather
than stalling the loop. The HTTP thread serves the latest snapshot, so a scrape never
touches the core while it runs and never waits for it.

Names follow Prometheus conventions: ``router_`` prefix, base units, ``_total`` for
counters, ``_seconds``/``_bytes``; labels are bounded sets (class, status, role, kind,
code, service, outcome), never an address or order id. docs/METRICS.md lists them.
"""

from __future__ import annotations

import threading
import time
from typing import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric,
)

from . import core as _native
from .protocol import RELIABLE_CLASSES, ErrorCode, MsgClass, Status
BOUNDS = _native.histogram_bounds()
#: Seconds between snapshots of the core (a scrape sees data at most this old; twice a
#: second, so consecutive once-a-second scrapes never see the same snapshot).
REFRESH_SECONDS = 0.5


def _buckets(counts: list[int], bounds: list[float]) -> list[tuple[str, float]]:
    """Non-cumulative native counts -> cumulative Prometheus buckets (last is +Inf)."""
    out, total = [], 0
    for bound, n in zip(bounds + [float("inf")], counts):
        total += n
        out.append(("+Inf" if bound == float("inf") else repr(bound), total))
    return out


class RouterCollector:
    """Collects from the latest snapshot of a :class:`router.server.Router`."""

    def __init__(self, router) -> None:
        self.router = router
        self._snapshot: dict | None = None
        self._taken = 0.0
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        """Take a snapshot; call from the router's thread between slices."""
        now = time.monotonic()
        if not force and now - self._taken < REFRESH_SECONDS:
            return
        r = self.router
        snap = r.core.metrics()
        snap["broker"] = r.broker.stats()
        snap["journal_bytes"] = r.store.total_bytes if r.store else 0
        self._snapshot, self._taken = snap, now

    def describe(self) -> list:
        """No fixed description: prometheus_client then does not collect at registration."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every router metric family, from the latest snapshot."""
        s = self._snapshot
        if s is None:
            return
        yield from self._traffic(s)
        yield from self._outcomes(s)
        yield from self._state(s)
        yield from self._latency(s)
        yield from self._journal(s)
        yield from self._services(s["broker"])

    def _traffic(self, s: dict) -> Iterator[Metric]:
        for name, key, doc in (
                ("router_messages_received", "msgs_in", "SENDs accepted, by message class"),
                ("router_messages_delivered", "msgs_out",
                 "DELIVER frames sent (fan-out and redeliveries included), by class")):
            fam = CounterMetricFamily(name, doc, labels=["class"])
            for cls in MsgClass:
                fam.add_metric([cls.name.lower()], s[key][cls])
            yield fam
        for name, key, doc in (
                ("router_fanout_deliveries", "fanout", "extra deliveries made by channel fan-out"),
                ("router_bytes_received", "bytes_in", "payload bytes received"),
                ("router_bytes_sent", "bytes_out", "payload bytes delivered")):
            yield CounterMetricFamily(name, doc, value=s[key])

    def _outcomes(self, s: dict) -> Iterator[Metric]:
        fam = CounterMetricFamily("router_receipts", "receipts issued, by status",
                                  labels=["status"])
        for status in Status:
            fam.add_metric([status.name.lower()], s["receipts"][status])
        yield fam
        for name, key, doc in (
                ("router_redeliveries", "redeliveries", "in-flight windows sent again, no ack"),
                ("router_dedup_hits", "dedup_hits", "repeated message ids not delivered again"),
                ("router_conflated", "conflated", "locations replaced by a newer one"),
                ("router_shed", "shed", "best-effort messages dropped for space"),
                ("router_expired", "expired", "messages whose TTL passed before delivery")):
            yield CounterMetricFamily(name, doc, value=s[key])
        fam = CounterMetricFamily("router_errors", "ERROR replies sent, by code", labels=["code"])
        for code, n in s["errors"].items():
            fam.add_metric([ErrorCode(code).name.lower()], n)
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
        fam = GaugeMetricFamily("router_peers", "connected peers, by role", labels=["role"])
        for role, n in s["peers_by_role"].items():
            fam.add_metric([role], n)
        yield fam
        yield GaugeMetricFamily("router_bound_addresses", "addresses bound to a connection",
                                value=s["bound_addresses"])
        yield GaugeMetricFamily("router_addresses", "addresses in the table (it only grows)",
                                value=s["addresses"])
        yield GaugeMetricFamily("router_address_limit", "max_addresses: beyond it, new "
                                "addresses are refused ADDRESS_LIMIT", value=s["address_limit"])
        yield GaugeMetricFamily("router_metrics_snapshot_age_seconds",
                                "how old the figures of this scrape are",
                                value=time.monotonic() - self._taken)

    def _latency(self, s: dict) -> Iterator[Metric]:
        fam = HistogramMetricFamily("router_hop_latency_seconds",
                                    "router receive to DELIVER send", labels=["class"])
        for cls in MsgClass:
            fam.add_metric([cls.name.lower()], _buckets(s["hop"][cls], BOUNDS["hop"]),
                           s["hop_sum_us"][cls] / 1e6)
        yield fam
        fam = HistogramMetricFamily("router_delivery_latency_seconds",
                                    "accepted to recipient ack (reliable classes)",
                                    labels=["class"])
        for cls in sorted(RELIABLE_CLASSES):
            fam.add_metric([cls.name.lower()], _buckets(s["delivery"][cls], BOUNDS["delivery"]),
                           s["delivery_sum_us"][cls] / 1e6)
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

    def _services(self, b: dict) -> Iterator[Metric]:
        workers = GaugeMetricFamily("router_service_workers", "workers READY, by service",
                                    labels=["service"])
        waiting = GaugeMetricFamily("router_service_waiting_requests",
                                    "requests waiting for a worker", labels=["service"])
        for name, svc in b["services"].items():
            workers.add_metric([name], svc["workers"])
            waiting.add_metric([name], svc["waiting"])
        yield workers
        yield waiting
        fam = CounterMetricFamily("router_service_requests", "service requests, by outcome",
                                  labels=["outcome"])
        for outcome, key in (("replied", "replies"), ("expired", "expired"),
                             ("no_service", "no_service"), ("failed", "failed")):
            fam.add_metric([outcome], b[key])
        yield fam
        fam = HistogramMetricFamily("router_service_request_seconds",
                                    "request arrival to reply")
        fam.add_metric([], _buckets(b["latency_buckets"], b["latency_bounds"]),
                       b["latency_sum"])
        yield fam


def serve_metrics(router, port: int, host: str = "127.0.0.1") -> tuple[RouterCollector, object]:
    """Start the /metrics HTTP endpoint for ``router``; returns (collector, server)."""
    registry = CollectorRegistry()
    collector = RouterCollector(router)
    registry.register(collector)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return collector, server
