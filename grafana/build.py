#!/usr/bin/env python3
"""Write the Grafana dashboards in ``grafana/dashboards/`` from one Python description.

The JSON files are generated and committed; edit this file and run it again::

    python grafana/build.py           # rewrite dashboards/*.json
    python grafana/build.py --check   # exit 1 if the committed JSON is out of date

It also writes ``alerts/router.histograms.test.yml``, the promtool tests of the histogram
alerts, from the core's real bucket bounds (``alerts/histogram_tests.py``): bounds are
never written by hand anywhere.

Every query uses ``$__rate_interval`` and the ``$job``/``$instance`` variables (overview;
the dispatch dashboard has one instance variable per process kind) so the same panels
work for one router or several; ``tests/test_observability.py`` runs every expression
against a real Prometheus scraping a real router, with the variables at "All" and at
each one's first real value.

Metric names and labels: ``docs/METRICS.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
sys.path[:0] = [str(HERE.parent), str(HERE / "alerts")]  # router.core; histogram_tests

import histogram_tests  # noqa: E402

#: The provisioned datasource (provisioning/datasources/prometheus.yaml) has this uid;
#: the dashboards pick it through the ``datasource`` variable, defaulting to it.
DATASOURCE_UID = "prometheus"
DS = {"type": "prometheus", "uid": "${datasource}"}

#: Label filter of the overview dashboard: one router job, some or all instances.
SEL = 'job=~"$job", instance=~"$instance"'
#: The overview's gateway row: its own instance variable (gateways are other processes).
GW = 'instance=~"$gateway"'
RATE = "$__rate_interval"


def quantiles(metric: str, by: str, sel: str = SEL, qs=(0.5, 0.95, 0.99)) -> list[dict]:
    """histogram_quantile targets for ``metric`` (a histogram without the _bucket suffix)."""
    group = f"le, {by}" if by else "le"
    legend = "{{%s}} " % by if by else ""
    return [target(
        f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{sel}}}[{RATE}])))",
        f"{legend}p{round(q * 100)}") for q in qs]


def target(expr: str, legend: str = "", instant: bool = False) -> dict:
    t = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "range": True}
    if instant:
        t.update(instant=True, range=False)
    return t


class Layout:
    """Places panels on Grafana's 24-column grid, row after row."""

    def __init__(self) -> None:
        self.panels: list[dict] = []
        self.x = self.y = 0
        self.row_h = 0
        self.next_id = 1

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "id": self._id(), "collapsed": False,
                            "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1}, "panels": []})
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0

    def _place(self, panel: dict, w: int, h: int) -> dict:
        if self.x + w > 24:
            self._newline()
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        panel["id"] = self._id()
        self.x += w
        self.row_h = max(self.row_h, h)
        self.panels.append(panel)
        return panel

    def timeseries(self, title: str, targets: list[dict], *, unit: str = "short",
                   description: str = "", w: int = 12, h: int = 8, stack: bool = False,
                   thresholds: list[tuple[float, str]] | None = None) -> dict:
        custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if stack else 0,
                  "showPoints": "never", "spanNulls": False,
                  "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
        defaults = {"unit": unit, "custom": custom, "min": 0}
        if thresholds:
            custom["thresholdsStyle"] = {"mode": "dashed"}
            defaults["thresholds"] = _thresholds(thresholds)
        return self._place({
            "type": "timeseries", "title": title, "description": description,
            "datasource": DS, "targets": _refids(targets),
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom",
                                   "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
        }, w, h)

    def stat(self, title: str, expr: str, *, unit: str = "short", description: str = "",
             w: int = 4, h: int = 4, thresholds: list[tuple[float, str]] | None = None,
             legend: str = "", text_mode: str = "auto") -> dict:
        return self._place({
            "type": "stat", "title": title, "description": description, "datasource": DS,
            "targets": _refids([target(expr, legend)]),
            "fieldConfig": {"defaults": {
                "unit": unit,
                "thresholds": _thresholds(thresholds or [(0, "green")]),
                "color": {"mode": "thresholds"}}, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "area", "textMode": text_mode,
                        "justifyMode": "auto", "orientation": "auto"},
        }, w, h)


def _thresholds(steps: list[tuple[float, str]]) -> dict:
    out = [{"color": steps[0][1], "value": None}]
    out += [{"color": c, "value": v} for v, c in steps[1:]]
    return {"mode": "absolute", "steps": out}


def _refids(targets: list[dict]) -> list[dict]:
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    return targets


def datasource_var() -> dict:
    return {"name": "datasource", "label": "Data source", "type": "datasource",
            "query": "prometheus", "current": {"text": "Prometheus", "value": DATASOURCE_UID},
            "hide": 0, "refresh": 1, "regex": "", "options": []}


def query_var(name: str, label: str, query: str, *, all_value: str | None = None,
              multi: bool = True, regex: str = "") -> dict:
    v = {"name": name, "label": label, "type": "query", "datasource": DS,
         "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
         "refresh": 2, "sort": 1, "multi": multi, "hide": 0, "regex": regex, "options": [],
         "includeAll": all_value is not None,
         "current": {"text": ["All"], "value": ["$__all"]} if all_value is not None else {}}
    if all_value is not None:
        v["allValue"] = all_value
    return v


def dashboard(uid: str, title: str, description: str, panels: list[dict], variables: list[dict],
              tags: list[str]) -> dict:
    return {
        "uid": uid, "title": title, "description": description, "tags": tags,
        "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
        "refresh": "10s", "time": {"from": "now-1h", "to": "now"}, "timezone": "",
        "timepicker": {}, "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
        "annotations": {"list": []},
        "links": [{"title": "Router dashboards", "type": "dashboards", "tags": ["router"],
                   "asDropdown": True, "includeVars": True, "keepTime": True}],
        "templating": {"list": variables},
        "panels": panels,
    }


# --------------------------------------------------------------------------- overview
def overview() -> dict:
    L = Layout()
    s = SEL
    # Headline numbers: the ones a lunch-peak on-call looks at first.
    L.stat("Routers up", f'sum(up{{{s}}})', description="Scrape targets of the router job "
           "that answered the last scrape.", thresholds=[(0, "red"), (1, "green")])
    L.stat("Accepted /s", f"sum(rate(router_messages_received_total{{{s}}}[{RATE}]))",
           unit="reqps", description="SENDs accepted, all classes.")
    L.stat("Delivered /s", f"sum(rate(router_messages_delivered_total{{{s}}}[{RATE}]))",
           unit="reqps", description="DELIVER frames sent, including fan-out and redeliveries.")
    L.stat("Delivery p99 (reliable, online)",
           f"histogram_quantile(0.99, sum by (le) (rate(router_delivery_latency_seconds_bucket"
           f"{{{s}}}[{RATE}])))", unit="s",
           description="Accepted until the recipient acked, all reliable classes, recipients "
           "online throughout. 100 ms is fine, 500 ms is felt.",
           thresholds=[(0, "green"), (0.1, "yellow"), (0.5, "red")])
    L.stat("Offline backlog", f"sum(router_offline_backlog_messages{{{s}}})",
           description="Reliable messages held for addresses nobody has bound.",
           thresholds=[(0, "green"), (1000, "yellow"), (10000, "red")])
    L.stat("Dispatch workers", f'sum(router_service_workers{{{s}, service="dispatch"}})',
           description="Live workers registered for the dispatch service. 0: no rider gets "
           "an offer.", thresholds=[(0, "red"), (1, "yellow"), (2, "green")])
    L.stat("Oldest queued message", f"max(router_oldest_queued_message_age_seconds{{{s}}})",
           unit="s", description="Age of the oldest message held in any queue (0: none). "
           "Minutes: someone has been offline that long, or a queue is stuck.",
           thresholds=[(0, "green"), (60, "yellow"), (600, "red")])
    L.stat("Refusals /s", f"sum(rate(router_receipts_refused_total{{{s}}}[{RATE}]))",
           unit="reqps", description="REFUSED receipts: reliable sends the router did not "
           "take (by code below).", thresholds=[(0, "green"), (0.1, "yellow"), (10, "red")])
    L.stat("Data disk free", f"min(router_journal_disk_free_bytes{{{s}}})", unit="bytes",
           description="Free space of the data directory's filesystem (journal, history). "
           "Full: reliable sends are refused with STORAGE_FAILED.",
           thresholds=[(0, "red"), (1 << 30, "yellow"), (10 << 30, "green")])
    L.stat("Router CPU", f"max(rate(process_cpu_seconds_total{{{s}}}[{RATE}]))",
           unit="percentunit", description="CPU of the busiest router process (1 = one core; "
           "the routing loop is one thread).",
           thresholds=[(0, "green"), (0.7, "yellow"), (0.9, "red")])
    L.stat("Uptime", f"min(time() - process_start_time_seconds{{{s}}})", unit="s",
           description="Since the most recent router start: a small value means a restart.")
    L.stat("Version", f"router_build_info{{{s}}}", legend="{{version}} (libzmq {{libzmq}})",
           text_mode="name", description="router_build_info: router, pyzmq, libzmq and "
           "Cython versions of each instance.")

    L.row("Traffic")
    L.timeseries("Accepted by class",
                 [target(f"sum by (class) (rate(router_messages_received_total{{{s}}}[{RATE}]))",
                         "{{class}}")],
                 unit="reqps", stack=True, description="SENDs accepted per second by message "
                 "class (order, dispatch, chat, notice, location).")
    L.timeseries("Delivered by class",
                 [target(f"sum by (class) (rate(router_messages_delivered_total{{{s}}}[{RATE}]))",
                         "{{class}}"),
                  target(f"sum(rate(router_fanout_deliveries_total{{{s}}}[{RATE}]))",
                         "of which channel fan-out"),
                  target(f"sum(rate(router_acks_received_total{{{s}}}[{RATE}]))", "acks received")],
                 unit="reqps", description="DELIVER frames sent per second, including "
                 "channel fan-out and redeliveries, and the recipients' acks.")
    L.timeseries("Bytes", [
        target(f"sum(rate(router_bytes_received_total{{{s}}}[{RATE}]))", "received"),
        target(f"sum(rate(router_bytes_sent_total{{{s}}}[{RATE}]))", "sent")],
        unit="Bps", description="Payload bytes received in SENDs and sent in DELIVERs.")
    L.timeseries("Errors by code",
                 [target(f"sum by (code) (rate(router_errors_total{{{s}}}[{RATE}]))",
                         "{{code}}"),
                  target(f"sum(rate(router_errors_suppressed_total{{{s}}}[{RATE}]))",
                         "not sent (per-peer rate limit)")],
                 unit="reqps", description="ERRORs the router decided, by code (malformed, "
                 "too_large, queue_full, ...), counted before the per-peer rate limit; the "
                 "last line is the part the limit kept from the peer. A jump after a deploy: "
                 "a client speaks the protocol wrong.")
    L.timeseries("Refused receipts by code",
                 [target(f"sum by (code) (rate(router_receipts_refused_total{{{s}}}[{RATE}]))",
                         "{{code}}")],
                 unit="reqps", stack=True, description="REFUSED receipts by reason: "
                 "queue_full (a recipient's queue is full), sender_quota, overloaded, "
                 "storage_failed, bad_address... The sender must retry or fix the message.")

    L.row("Latency")
    L.timeseries("Hop latency, reliable classes (receive to DELIVER sent)",
                 quantiles("router_hop_latency_seconds", "class",
                           f'{s}, class=~"order|dispatch|chat"'), unit="s",
                 description="Time inside the router, per class: p50, p95, p99; messages to "
                 "recipients online when they arrived, first send only.")
    L.timeseries("Hop latency, best-effort classes (notice, location)",
                 quantiles("router_hop_latency_seconds", "class",
                           f'{s}, class=~"notice|location"'), unit="s",
                 description="Time inside the router for notices and location updates "
                 "(never acked, so they have no delivery latency).")
    L.timeseries("Delivery latency, recipient online (accepted to ack)",
                 quantiles("router_delivery_latency_seconds", "class"), unit="s",
                 thresholds=[(0, "green"), (0.5, "red")],
                 description="Reliable classes, recipients online throughout: from ACCEPTED "
                 "until the recipient acked. Includes the recipient's network and its own "
                 "processing; alert at p99 > 0.5 s.")
    L.timeseries("Delivery latency after an offline wait",
                 quantiles("router_offline_delivery_latency_seconds", "class", qs=(0.5, 0.99)),
                 unit="s", description="Reliable messages that waited for an offline "
                 "recipient: accepted until acked. Long by nature (a rider in a tunnel); "
                 "not alerted on.")

    L.row("Reliability")
    L.timeseries("Receipts by status",
                 [target(f"sum by (status) (rate(router_receipts_total{{{s}}}[{RATE}]))",
                         "{{status}}"),
                  target(f"sum(rate(router_receipts_dropped_total{{{s}}}[{RATE}]))",
                         "not sent (sender gone)")],
                 unit="reqps", description="Receipts sent to senders: accepted, delivered, "
                 "expired, refused, failed; and receipts dropped because the sender was gone "
                 "or its pipe full.")
    L.timeseries("Redeliveries, duplicates, conflation, shedding, expiry", [
        target(f"sum(rate(router_redeliveries_total{{{s}}}[{RATE}]))", "redelivered"),
        target(f"sum(rate(router_dedup_hits_total{{{s}}}[{RATE}]))", "duplicate sends"),
        target(f"sum(rate(router_conflated_total{{{s}}}[{RATE}]))", "locations conflated"),
        target(f"sum(rate(router_shed_total{{{s}}}[{RATE}]))", "shed"),
        target(f"sum(rate(router_expired_total{{{s}}}[{RATE}]))", "expired")],
        unit="reqps", description="Redelivered: messages sent again for lack of an ack. "
        "Shed: location updates dropped under overload. Expired: TTL passed before delivery.")
    L.timeseries("Redelivery ratio (reliable classes)", [target(
        f"sum(rate(router_redeliveries_total{{{s}}}[{RATE}])) / "
        f'sum(rate(router_messages_delivered_total{{{s}, class=~"order|dispatch|chat"}}'
        f"[{RATE}]))", "resent / reliable delivered")],
        unit="percentunit", thresholds=[(0, "green"), (0.1, "red")],
        description="Share of reliable DELIVER frames that were resends. High: recipients "
        "on bad networks, or acks not reaching the router (alert above 10%).")

    L.row("Queues and peers")
    L.timeseries("Queued messages by kind", [
        target(f"sum by (kind) (router_queued_messages{{{s}}})", "{{kind}}"),
        target(f"sum(router_offline_backlog_messages{{{s}}})", "offline backlog (reliable)")],
        description="Messages waiting in the router: reliable (in flight or queued), notices, "
        "latest locations; the offline backlog is the reliable part held for unbound addresses.")
    L.timeseries("Oldest queued message and offline addresses", [
        target(f"max(router_oldest_queued_message_age_seconds{{{s}}})", "oldest message age (s)"),
        target(f"sum(router_offline_addresses{{{s}}})", "offline addresses holding messages")],
        description="How long the oldest held message has waited, and how many unbound "
        "addresses hold reliable messages (riders and users offline with mail waiting).")
    L.timeseries("Peers by role and bound addresses", [
        target(f"sum by (role) (router_peers{{{s}}})", "{{role}}"),
        target(f"sum(router_bound_addresses{{{s}}})", "bound addresses")],
        description="Live connections by declared role, and addresses bound to a live peer.")
    L.timeseries("Connection churn and blocked sends", [
        target(f"sum(rate(router_peers_connected_total{{{s}}}[{RATE}]))", "connected"),
        target(f"sum(rate(router_peers_lost_total{{{s}}}[{RATE}]))", "lost (no BYE)"),
        target(f"sum(rate(router_blocked_sends_total{{{s}}}[{RATE}]))", "blocked sends")],
        unit="ops", description="Peers saying HELLO, peers dropped for heartbeat timeout, "
        "and sends that found a peer's pipe full (the message stays queued). Lost close to "
        "connected: the mobile network or a gateway is flapping.")
    L.timeseries("Address table", [
        target(f"sum(router_addresses{{{s}}})", "addresses in the table"),
        target(f"sum(router_address_limit{{{s}}})", "limit (max_addresses)")],
        description="The table keeps every address seen while the router runs; at the limit "
        "new addresses are refused ADDRESS_LIMIT (alert RouterAddressTableFilling at 80%).")

    L.row("Journal")
    L.timeseries("Journal commit latency",
                 quantiles("router_journal_commit_seconds", "", qs=(0.5, 0.99)), unit="s",
                 thresholds=[(0, "green"), (0.05, "red")],
                 description="One group commit (write + fsync). Slow commits delay ACCEPTED "
                 "for every reliable send; alert at p99 > 50 ms.")
    L.timeseries("Journal commits", [
        target(f"sum(rate(router_journal_commits_total{{{s}}}[{RATE}]))", "commits"),
        target(f"sum(rate(router_journal_commit_failures_total{{{s}}}[{RATE}]))", "failures")],
        unit="ops", w=6, description="Failures refuse reliable sends with STORAGE_FAILED.")
    L.timeseries("Journal size and disk free", [
        target(f"sum by (instance) (router_journal_bytes{{{s}}})", "journal {{instance}}"),
        target(f"min by (instance) (router_journal_disk_free_bytes{{{s}}})",
               "disk free {{instance}}")],
        unit="bytes", w=6, description="Journal bytes on disk, and free space on the data "
        "directory's filesystem (alert RouterJournalDiskFilling).")
    L.timeseries("Messages recovered at start", [
        target(f"sum by (instance) (router_journal_replayed_messages{{{s}}})", "{{instance}}")],
        w=6, description="Messages the journal replay recovered when each router started.")

    L.row("Services")
    L.timeseries("Workers by service", [
        target(f"sum by (service) (router_service_workers{{{s}}})", "{{service}}")],
        w=6, description="Live workers registered per service.")
    L.timeseries("Waiting requests by service", [
        target(f"sum by (service) (router_service_waiting_requests{{{s}}})", "{{service}}"),
        target(f"sum(router_service_unregistered_waiting_requests{{{s}}})",
               "for unregistered services")],
        w=6, description="Requests queued at the router for want of a free worker, and "
        "those waiting for a service no worker has registered yet.")
    L.timeseries("Worker credit and busy requests", [
        target(f"sum by (service) (router_service_worker_credit{{{s}}})", "free credit {{service}}"),
        target(f"sum by (service) (router_service_busy_requests{{{s}}})", "busy {{service}}")],
        w=6, description="Free credit: requests the READY workers would take now; busy: "
        "requests a worker is handling. Credit 0 with requests waiting: add workers.")
    L.timeseries("Service requests by outcome", [
        target(f"sum by (outcome) (rate(router_service_requests_total{{{s}}}[{RATE}]))",
               "{{outcome}}"),
        target(f"sum(rate(router_service_late_replies_total{{{s}}}[{RATE}]))", "late replies")],
        unit="reqps", w=6, description="replied, expired, no_service, failed, queue_full; "
        "and replies that came after their request was over.")
    L.timeseries("Service request latency",
                 quantiles("router_service_request_seconds", "", qs=(0.5, 0.99)), unit="s",
                 w=6, description="Request received until the worker's reply was sent back.")

    L.row("Gateway")
    g = GW
    L.timeseries("App connections by party", [
        target(f"sum by (party) (gateway_connections{{{g}}})", "{{party}}")],
        w=6, stack=True, description="WebSocket apps connected to the gateways, by the "
        "kind of their address (user, merchant, rider). A cliff: a gateway restarted or "
        "phones lost the network.")
    L.timeseries("App frames in and out", [
        target(f"sum by (class) (rate(gateway_messages_out_total{{{g}}}[{RATE}]))",
               "out {{class}}"),
        target(f"sum(rate(gateway_messages_in_total{{{g}}}[{RATE}]))", "in (apps' sends)"),
        target(f"sum(rate(gateway_resumes_total{{{g}}}[{RATE}]))", "resumes")],
        unit="reqps", w=6, description="Deliveries written to apps by class; frames the "
        "apps sent on to the router; hellos that resumed after a sequence (returning apps).")
    L.timeseries("End to end to the app",
                 quantiles("gateway_e2e_latency_seconds", "class", g, qs=(0.5, 0.99)),
                 unit="s", w=6, description="Router ACCEPTED to written to the app's socket, "
                 "per class. The target at lunch peak: p99 under 50 ms for order and dispatch, "
                 "100 ms for location.")
    L.timeseries("Waiting, shed and closed", [
        target(f"sum(gateway_queued{{{g}}})", "frames waiting"),
        target(f"sum(rate(gateway_shed_total{{{g}}}[{RATE}]))", "shed /s"),
        target(f"sum by (reason) (rate(gateway_closed_total{{{g}}}[{RATE}]))",
               "closed /s {{reason}}")],
        w=6, description="Frames waiting to be written to apps; best-effort frames not "
        "written (shed notices, conflated positions); connections the gateway closed, by "
        "reason (too_slow, ping_timeout, unauthorized, replaced, going_away). Rising "
        "too_slow or ping_timeout: phones on a bad network.")

    L.row("Process")
    L.timeseries("CPU", [
        target(f"rate(process_cpu_seconds_total{{{s}}}[{RATE}])", "{{instance}}")],
        unit="percentunit", w=6, description="CPU seconds per second of each router process "
        "(the routing loop is one thread: near 1 it is saturated).")
    L.timeseries("Memory", [
        target(f"process_resident_memory_bytes{{{s}}}", "resident {{instance}}")],
        unit="bytes", w=6, description="Resident memory of each router process.")
    L.timeseries("Open files", [
        target(f"process_open_fds{{{s}}}", "open {{instance}}"),
        target(f"process_max_fds{{{s}}}", "limit {{instance}}")],
        w=6, description="File descriptors: one per connection, journal segment and "
        "socket; at the limit new connections fail.")
    L.timeseries("Python garbage collection", [
        target(f"sum by (instance) (rate(python_gc_collections_total{{{s}}}[{RATE}]))",
               "{{instance}}")],
        unit="ops", w=6, description="GC runs per second of the router's Python side "
        "(broker, housekeeping); the native core allocates outside it.")

    variables = [
        datasource_var(),
        query_var("job", "Job", "label_values(router_messages_received_total, job)",
                  multi=False),
        query_var("instance", "Router", 'label_values(router_messages_received_total{job=~"$job"}, '
                  "instance)", all_value=".*"),
        query_var("gateway", "Gateway", "label_values(gateway_connections, instance)",
                  all_value=".*"),
    ]
    variables[1]["current"] = {"text": "router", "value": "router"}
    return dashboard("router-overview", "Router overview",
                     "Order-notification router: traffic, latency, reliability, queues, "
                     "journal, services, the WebSocket gateways and the process.", L.panels, variables, ["router"])


# --------------------------------------------------------------------------- dispatch
#: Three kinds of process feed this dashboard, each on its own instances: the order
#: service (router_dispatch_offers_total, router_orders_total), the dispatch workers
#: (router_dispatch_decision_seconds) and the routers (router_service_*). One instance
#: variable for all three selected the order service's instance and left the workers'
#: panels with nothing (NaN); each kind has its own variable.
ORDERS = 'instance=~"$orders"'
WORKERS = 'instance=~"$worker"'
ROUTERS = 'instance=~"$router"'


def dispatch() -> dict:
    L = Layout()
    o, w, r = ORDERS, WORKERS, ROUTERS

    def offers(outcome: str) -> str:
        return f'sum(rate(router_dispatch_offers_total{{{o}, outcome="{outcome}"}}[{RATE}]))'

    L.stat("Dispatch workers", f'sum(router_service_workers{{{r}, service="dispatch"}})',
           description="Live dispatch workers registered at the router(s).",
           thresholds=[(0, "red"), (1, "yellow"), (2, "green")])
    L.stat("Waiting dispatch requests",
           f'sum(router_service_waiting_requests{{{r}, service="dispatch"}})',
           description="Dispatch requests queued at the router for want of a free worker.",
           thresholds=[(0, "green"), (10, "yellow"), (100, "red")])
    L.stat("Offers /s", offers("sent"), unit="reqps",
           description="dispatch.offer messages sent to riders.")
    L.stat("Acceptance", f'{offers("accepted")} / {offers("sent")}', unit="percentunit",
           description="Offers accepted / offers sent.",
           thresholds=[(0, "red"), (0.5, "yellow"), (0.8, "green")])
    L.stat("Decision p99", f"histogram_quantile(0.99, sum by (le) "
           f"(rate(router_dispatch_decision_seconds_bucket{{{w}}}[{RATE}])))", unit="s",
           description="Scoring time of one dispatch decision.",
           thresholds=[(0, "green"), (0.05, "yellow"), (0.25, "red")])
    L.stat("Orders delivered /s",
           f'sum(rate(router_orders_total{{{o}, state="delivered"}}[{RATE}]))', unit="reqps")

    L.row("Offers")
    L.timeseries("Offers by outcome", [target(
        f"sum by (outcome) (rate(router_dispatch_offers_total{{{o}}}[{RATE}]))", "{{outcome}}")],
        unit="reqps", description="sent, accepted, rejected, timed_out, reassigned, escalated.")
    L.timeseries("Reassignments and escalations", [
        target(offers("reassigned"), "reassigned"),
        target(offers("escalated"), "escalated"),
        target(f'sum(rate(router_dispatch_offers_total{{{o}, outcome=~"rejected|timed_out"}}'
               f'[{RATE}]))', "rejected or timed out")],
        unit="reqps", description="Reassigned: the offer went to the next rider after a "
        "rejection or timeout. Escalated: no rider took it; a human dispatcher must.")

    L.row("Decisions and orders")
    L.timeseries("Decision latency", quantiles("router_dispatch_decision_seconds", "", w,
                                               qs=(0.5, 0.99)), unit="s",
                 description="Scoring time per dispatch decision, p50 and p99.")
    L.timeseries("Batches", [
        target(f"sum(rate(router_dispatch_batch_size_sum{{{w}}}[{RATE}])) / "
               f"sum(rate(router_dispatch_batch_size_count{{{w}}}[{RATE}]))", "mean batch size"),
        target(f"sum(rate(router_dispatch_batch_size_count{{{w}}}[{RATE}]))",
               "batches /s")],
        description="Orders assigned together per batch, and batches per second: at the "
        "lunch peak batches grow, off peak they hold one or two orders.")
    L.timeseries("Batch solve and wait", [
        *(target(f"histogram_quantile({q}, sum by (le) (rate({m}_bucket{{{w}}}[{RATE}])))",
                 f"{what} p{round(q * 100)}")
          for what, m in (("solve", "router_dispatch_batch_solve_seconds"),
                          ("wait", "router_dispatch_batch_wait_seconds"))
          for q in (0.5, 0.99))],
        unit="s", description="Solve: scoring and assigning one batch (the target is p99 "
        "< 200 ms at the city peak). Wait: how long a request waited in the worker for "
        "its batch (at most --batch-interval).")
    L.timeseries("Orders by state", [target(
        f"sum by (state) (rate(router_orders_total{{{o}}}[{RATE}]))", "{{state}}")],
        unit="reqps", description="Order state changes per second: placed, confirmed, "
        "assigned, picked_up, delivered, cancelled.")
    L.timeseries("Dispatch requests at the router", [
        target(f'sum(router_service_workers{{{r}, service="dispatch"}})', "workers"),
        target(f'sum(router_service_waiting_requests{{{r}, service="dispatch"}})',
               "waiting requests"),
        target(f'sum(router_service_worker_credit{{{r}, service="dispatch"}})', "free credit"),
        target(f'sum(router_service_busy_requests{{{r}, service="dispatch"}})',
               "busy requests")],
        description="The router's view of the dispatch service: workers, requests waiting "
        "for one, free credit of the READY workers, requests being handled.")

    variables = [
        datasource_var(),
        query_var("orders", "Order service",
                  "label_values(router_dispatch_offers_total, instance)", all_value=".*"),
        # Not label_values(router_dispatch_decision_seconds_count, instance): every
        # process that imports workers.dispatch.worker (the simulated city does, for the
        # channel name) exports that histogram empty, and choosing it showed NaN. Only
        # instances that have made decisions are dispatch workers.
        query_var("worker", "Dispatch worker",
                  "query_result(count by (instance) (router_dispatch_decision_seconds_count > 0))",
                  all_value=".*", regex='/instance="([^"]+)"/'),
        query_var("router", "Router",
                  'label_values(router_service_workers{service="dispatch"}, instance)',
                  all_value=".*"),
    ]
    return dashboard("router-dispatch", "Dispatch", "Dispatch offers, decisions and order "
                     "states, from the order service, the dispatch workers and the routers.",
                     L.panels, variables, ["router", "dispatch"])


DASHBOARDS = {"overview.json": overview, "dispatch.json": dispatch}


def render(build) -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def outputs() -> dict[Path, str]:
    """Every generated file and its text: the dashboards and the histogram alert tests."""
    from router.core import histogram_bounds

    out = {OUT / name: render(build) for name, build in DASHBOARDS.items()}
    out[histogram_tests.OUT] = histogram_tests.render(histogram_bounds())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="do not write; exit 1 if a generated file differs")
    args = ap.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    stale = []
    for path, text in outputs().items():
        name = str(path.relative_to(HERE))
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(HERE.parent)}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python grafana/build.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
