#!/usr/bin/env python3
"""Write the Grafana dashboards in ``grafana/dashboards/`` from one Python description.

The JSON files are generated and committed; edit this file and run it again::

    python grafana/build.py           # rewrite dashboards/*.json
    python grafana/build.py --check   # exit 1 if the committed JSON is out of date

Every query uses ``$__rate_interval`` and the ``$job``/``$instance`` variables (overview)
so the same panels work for one router or several; ``tests/test_observability.py`` runs
every expression against a real Prometheus scraping a real router.

Metric names and labels: ``docs/METRICS.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"

#: The provisioned datasource (provisioning/datasources/prometheus.yaml) has this uid;
#: the dashboards pick it through the ``datasource`` variable, defaulting to it.
DATASOURCE_UID = "prometheus"
DS = {"type": "prometheus", "uid": "${datasource}"}

#: Label filter of the overview dashboard: one router job, some or all instances.
SEL = 'job=~"$job", instance=~"$instance"'
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
             legend: str = "") -> dict:
        return self._place({
            "type": "stat", "title": title, "description": description, "datasource": DS,
            "targets": _refids([target(expr, legend)]),
            "fieldConfig": {"defaults": {
                "unit": unit,
                "thresholds": _thresholds(thresholds or [(0, "green")]),
                "color": {"mode": "thresholds"}}, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "area", "textMode": "auto",
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
              multi: bool = True) -> dict:
    v = {"name": name, "label": label, "type": "query", "datasource": DS,
         "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
         "refresh": 2, "sort": 1, "multi": multi, "hide": 0, "regex": "", "options": [],
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
    L.stat("Delivery p99 (reliable)",
           f"histogram_quantile(0.99, sum by (le) (rate(router_delivery_latency_seconds_bucket"
           f"{{{s}}}[{RATE}])))", unit="s",
           description="Accepted until the recipient acked, all reliable classes. 100 ms is "
           "fine, 500 ms is felt.", thresholds=[(0, "green"), (0.1, "yellow"), (0.5, "red")])
    L.stat("Offline backlog", f"sum(router_offline_backlog_messages{{{s}}})",
           description="Reliable messages held for addresses nobody has bound.",
           thresholds=[(0, "green"), (1000, "yellow"), (10000, "red")])
    L.stat("Dispatch workers", f'sum(router_service_workers{{{s}, service="dispatch"}})',
           description="Live workers registered for the dispatch service. 0: no rider gets "
           "an offer.", thresholds=[(0, "red"), (1, "yellow"), (2, "green")])

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
                         "of which channel fan-out")],
                 unit="reqps", description="DELIVER frames sent per second, including "
                 "channel fan-out and redeliveries.")
    L.timeseries("Bytes", [
        target(f"sum(rate(router_bytes_received_total{{{s}}}[{RATE}]))", "received"),
        target(f"sum(rate(router_bytes_sent_total{{{s}}}[{RATE}]))", "sent")],
        unit="Bps", description="Payload bytes received in SENDs and sent in DELIVERs.")
    L.timeseries("Errors by code",
                 [target(f"sum by (code) (rate(router_errors_total{{{s}}}[{RATE}]))",
                         "{{code}}")],
                 unit="reqps", stack=True, description="Protocol errors the router answered "
                 "(malformed, too_large, queue_full, ...). A jump after a deploy: a client "
                 "speaks the protocol wrong.")

    L.row("Latency")
    L.timeseries("Hop latency (receive to DELIVER sent)",
                 quantiles("router_hop_latency_seconds", "class"), unit="s",
                 description="Time inside the router, per class: p50, p95, p99.")
    L.timeseries("Delivery latency (accepted to recipient ack)",
                 quantiles("router_delivery_latency_seconds", "class"), unit="s",
                 thresholds=[(0, "green"), (0.5, "red")],
                 description="Reliable classes only: from ACCEPTED until the recipient acked. "
                 "Includes the recipient's network and its own processing; alert at p99 > 0.5 s.")

    L.row("Reliability")
    L.timeseries("Receipts by status",
                 [target(f"sum by (status) (rate(router_receipts_total{{{s}}}[{RATE}]))",
                         "{{status}}")],
                 unit="reqps", description="Receipts sent to senders: accepted, delivered, "
                 "expired, refused, failed.")
    L.timeseries("Redeliveries, duplicates, conflation, shedding, expiry", [
        target(f"sum(rate(router_redeliveries_total{{{s}}}[{RATE}]))", "redelivered"),
        target(f"sum(rate(router_dedup_hits_total{{{s}}}[{RATE}]))", "duplicate sends"),
        target(f"sum(rate(router_conflated_total{{{s}}}[{RATE}]))", "locations conflated"),
        target(f"sum(rate(router_shed_total{{{s}}}[{RATE}]))", "shed"),
        target(f"sum(rate(router_expired_total{{{s}}}[{RATE}]))", "expired")],
        unit="reqps", description="Redelivered: sent again for lack of an ack. Shed: "
        "location updates dropped under overload. Expired: TTL passed before delivery.")
    L.timeseries("Redelivery ratio", [target(
        f"sum(rate(router_redeliveries_total{{{s}}}[{RATE}])) / "
        f"sum(rate(router_messages_delivered_total{{{s}}}[{RATE}]))", "redelivered / delivered")],
        unit="percentunit", thresholds=[(0, "green"), (0.1, "red")],
        description="Share of deliveries that were resends. High: recipients on bad "
        "networks, or acks not reaching the router.")

    L.row("Queues and peers")
    L.timeseries("Queued messages by kind", [
        target(f"sum by (kind) (router_queued_messages{{{s}}})", "{{kind}}"),
        target(f"sum(router_offline_backlog_messages{{{s}}})", "offline backlog (reliable)")],
        description="Messages waiting in the router: reliable (in flight or queued), notices, "
        "latest locations; the offline backlog is the reliable part held for unbound addresses.")
    L.timeseries("Peers by role and bound addresses", [
        target(f"sum by (role) (router_peers{{{s}}})", "{{role}}"),
        target(f"sum(router_bound_addresses{{{s}}})", "bound addresses")],
        description="Live connections by declared role, and addresses bound to a live peer.")
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
    L.timeseries("Journal size", [
        target(f"sum by (instance) (router_journal_bytes{{{s}}})", "{{instance}}")],
        unit="bytes", w=6, description="Journal bytes on disk.")

    L.row("Services")
    L.timeseries("Workers by service", [
        target(f"sum by (service) (router_service_workers{{{s}}})", "{{service}}")],
        w=6, description="Live workers registered per service.")
    L.timeseries("Waiting requests by service", [
        target(f"sum by (service) (router_service_waiting_requests{{{s}}})", "{{service}}")],
        w=6, description="Requests queued at the router for want of a free worker.")
    L.timeseries("Service requests by outcome", [
        target(f"sum by (outcome) (rate(router_service_requests_total{{{s}}}[{RATE}]))",
               "{{outcome}}")],
        unit="reqps", w=6, description="replied, expired, no_service, failed.")
    L.timeseries("Service request latency",
                 quantiles("router_service_request_seconds", "", qs=(0.5, 0.99)), unit="s",
                 w=6, description="Request received until the worker's reply was sent back.")

    variables = [
        datasource_var(),
        query_var("job", "Job", "label_values(router_messages_received_total, job)",
                  multi=False),
        query_var("instance", "Router", 'label_values(router_messages_received_total{job=~"$job"}, '
                  "instance)", all_value=".*"),
    ]
    variables[1]["current"] = {"text": "router", "value": "router"}
    return dashboard("router-overview", "Router overview",
                     "Order-notification router: traffic, latency, reliability, queues, "
                     "journal and services.", L.panels, variables, ["router"])


# --------------------------------------------------------------------------- dispatch
#: The dispatch service's own metrics (router_dispatch_*, router_orders_total) come from
#: the dispatch process, scraped under its own job; the worker gauges come from the router.
DSEL = 'instance=~"$instance"'


def dispatch() -> dict:
    L = Layout()
    d = DSEL

    def offers(outcome: str) -> str:
        return f'sum(rate(router_dispatch_offers_total{{{d}, outcome="{outcome}"}}[{RATE}]))'

    L.stat("Dispatch workers", 'sum(router_service_workers{service="dispatch"})',
           description="Live dispatch workers registered at the router(s).",
           thresholds=[(0, "red"), (1, "yellow"), (2, "green")])
    L.stat("Waiting dispatch requests", 'sum(router_service_waiting_requests{service="dispatch"})',
           description="Dispatch requests queued at the router for want of a free worker.",
           thresholds=[(0, "green"), (10, "yellow"), (100, "red")])
    L.stat("Offers /s", offers("sent"), unit="reqps",
           description="dispatch.offer messages sent to riders.")
    L.stat("Acceptance", f'{offers("accepted")} / {offers("sent")}', unit="percentunit",
           description="Offers accepted / offers sent.",
           thresholds=[(0, "red"), (0.5, "yellow"), (0.8, "green")])
    L.stat("Decision p99", f"histogram_quantile(0.99, sum by (le) "
           f"(rate(router_dispatch_decision_seconds_bucket{{{d}}}[{RATE}])))", unit="s",
           description="Scoring time of one dispatch decision.",
           thresholds=[(0, "green"), (0.05, "yellow"), (0.25, "red")])
    L.stat("Orders delivered /s",
           f'sum(rate(router_orders_total{{{d}, state="delivered"}}[{RATE}]))', unit="reqps")

    L.row("Offers")
    L.timeseries("Offers by outcome", [target(
        f"sum by (outcome) (rate(router_dispatch_offers_total{{{d}}}[{RATE}]))", "{{outcome}}")],
        unit="reqps", description="sent, accepted, rejected, timed_out, reassigned, escalated.")
    L.timeseries("Reassignments and escalations", [
        target(offers("reassigned"), "reassigned"),
        target(offers("escalated"), "escalated"),
        target(f'sum(rate(router_dispatch_offers_total{{{d}, outcome=~"rejected|timed_out"}}'
               f'[{RATE}]))', "rejected or timed out")],
        unit="reqps", description="Reassigned: the offer went to the next rider after a "
        "rejection or timeout. Escalated: no rider took it; a human dispatcher must.")

    L.row("Decisions and orders")
    L.timeseries("Decision latency", quantiles("router_dispatch_decision_seconds", "", d,
                                               qs=(0.5, 0.99)), unit="s",
                 description="Scoring time per dispatch decision, p50 and p99.")
    L.timeseries("Orders by state", [target(
        f"sum by (state) (rate(router_orders_total{{{d}}}[{RATE}]))", "{{state}}")],
        unit="reqps", description="Order state changes per second: placed, confirmed, "
        "assigned, picked_up, delivered, cancelled.")
    L.timeseries("Dispatch requests at the router", [
        target('sum(router_service_workers{service="dispatch"})', "workers"),
        target('sum(router_service_waiting_requests{service="dispatch"})', "waiting requests")],
        description="The router's view of the dispatch service.")

    variables = [
        datasource_var(),
        query_var("instance", "Dispatch instance",
                  "label_values(router_dispatch_offers_total, instance)", all_value=".*"),
    ]
    return dashboard("router-dispatch", "Dispatch", "Dispatch offers, decisions and order "
                     "states, from the dispatch service.", L.panels, variables,
                     ["router", "dispatch"])


DASHBOARDS = {"overview.json": overview, "dispatch.json": dispatch}


def render(build) -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="do not write; exit 1 if a committed dashboard differs")
    args = ap.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    stale = []
    for name, build in DASHBOARDS.items():
        text, path = render(build), OUT / name
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
