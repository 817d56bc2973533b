"""Observability: the router's /metrics against the metric contract (docs/METRICS.md),
every Grafana dashboard query against a real Prometheus scraping a real router, a real
dispatch worker and the order service of a simulated city, the alert rules under
promtool and in that Prometheus, and the latency histograms against what a client measures.

Prometheus and promtool come from Debian's ``prometheus`` package (.ci/run installs it).
Without them these tests skip on a developer machine; with CI set they fail instead, so
CI cannot pass by skipping them.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from router.core import histogram_bounds
from router.protocol import RELIABLE_CLASSES, ErrorCode, MsgClass, Role, Status

from support import ROOT, Peer, RouterProcess, free_port, start_gateway, token, wait_until

GRAFANA = ROOT / "grafana"
DASHBOARDS = [GRAFANA / "dashboards" / "overview.json", GRAFANA / "dashboards" / "dispatch.json"]
RULES = GRAFANA / "alerts" / "router.rules.yml"
#: Hand-written cases, and the histogram alerts' cases generated on the core's real
#: bucket bounds by grafana/build.py (test_dashboards_are_built_from_build_py checks it
#: is current).
RULE_TESTS = [GRAFANA / "alerts" / "router.rules.test.yml",
              GRAFANA / "alerts" / "router.histograms.test.yml"]

# --------------------------------------------------------------------------- the contract
METRICS_DOC = ROOT / "docs" / "METRICS.md"
BOUNDS = histogram_bounds()
CLASSES = {c.name.lower() for c in MsgClass}
RELIABLE = {c.name.lower() for c in RELIABLE_CLASSES}
#: Allowed values of bounded labels (from the protocol's tables where there is one);
#: labels not listed take any value (service: registered services only; versions).
LABEL_VALUES: dict[str, set] = {
    "class": CLASSES,
    "status": {s.name.lower() for s in Status},
    "code": {c.name.lower() for c in ErrorCode} - {"none"},
    "kind": {"reliable", "notice", "location"},
    "role": {"sender", "endpoint", "gateway", "worker"},
    "generation": {"0", "1", "2"},
}
#: (metric, label) -> allowed values, where one metric's label is narrower or different.
METRIC_LABEL_VALUES: dict[tuple[str, str], set] = {
    ("router_delivery_latency_seconds", "class"): RELIABLE,
    ("router_offline_delivery_latency_seconds", "class"): RELIABLE,
    ("router_service_requests", "outcome"): {"replied", "expired", "no_service", "failed",
                                             "queue_full"},
    ("router_dispatch_offers", "outcome"): {"sent", "accepted", "rejected", "timed_out",
                                            "reassigned", "escalated"},
    ("router_orders", "state"): {"placed", "confirmed", "assigned", "picked_up", "delivered",
                                 "cancelled"},
}
BUCKETS = {"router_hop_latency_seconds": BOUNDS["hop"],
           "router_delivery_latency_seconds": BOUNDS["delivery"],
           "router_offline_delivery_latency_seconds": BOUNDS["delivery"],
           "router_journal_commit_seconds": BOUNDS["commit"]}


def documented() -> dict[str, dict[str, tuple[str, dict[str, set | None]]]]:
    """docs/METRICS.md's tables: section -> {family name (as the parser names it:
    counters without _total) -> (type, {label: allowed values or None})}."""
    out: dict[str, dict] = {}
    section = None
    for line in METRICS_DOC.read_text().splitlines():
        if line.startswith("## "):
            section = out.setdefault(line[3:].strip(), {})
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if section is None or len(cells) != 4 or not cells[0].startswith("`"):
            continue
        kind = cells[1]
        labels = re.findall(r"`(\w+)`", cells[2])
        for name in re.findall(r"`(\w+)`", cells[0]):
            if kind == "counter":
                assert name.endswith("_total"), f"METRICS.md: counter {name} lacks _total"
                name = name[:-len("_total")]
            section[name] = (kind, {label: METRIC_LABEL_VALUES.get(
                (name, label), LABEL_VALUES.get(label)) for label in labels})
    return out


DOC = documented()
PROCESS_CONTRACT = DOC["Every process"]
#: The router's /metrics: its own families and the process's.
CONTRACT = {**DOC["Router"], **PROCESS_CONTRACT}
#: Exported by the dispatch/order service processes, not the router.
DISPATCH_CONTRACT = DOC["Order and dispatch services"]
#: Exported by `router gateway` (with the process families).
GATEWAY_CONTRACT = DOC["Gateway"]
#: A router on a Redis store adds these (tests/test_redis_store.py scrapes them).
STORE_CONTRACT = DOC["Router on a Redis store"]
ALL_DOCUMENTED = {**CONTRACT, **DISPATCH_CONTRACT, **GATEWAY_CONTRACT, **STORE_CONTRACT}

#: Panels (dashboard file, panel title) whose queries need the dispatch worker's or the
#: order service's own metrics (router_dispatch_*, router_orders_total), not the
#: router's. The real-Prometheus test runs those processes too (a dispatch worker
#: process and the simulated city's order service); in a short run some outcomes
#: (escalated, cancelled) may never happen, so for these panels every query must parse
#: and at least one query per panel must return data, and the series in
#: DISPATCH_MUST_HAVE_DATA must.
DISPATCH_PANELS = {
    ("dispatch.json", "Offers /s"),
    ("dispatch.json", "Acceptance"),
    ("dispatch.json", "Decision p99"),
    ("dispatch.json", "Orders delivered /s"),
    ("dispatch.json", "Offers by outcome"),
    ("dispatch.json", "Reassignments and escalations"),
    ("dispatch.json", "Decision latency"),
    ("dispatch.json", "Orders by state"),
    ("dispatch.json", "Batches"),
    ("dispatch.json", "Batch solve and wait"),
}
DISPATCH_MUST_HAVE_DATA = [
    'rate(router_dispatch_offers_total{outcome="sent"}[1m]) > 0',
    'rate(router_dispatch_offers_total{outcome="accepted"}[1m]) > 0',
    'rate(router_orders_total{state="placed"}[1m]) > 0',
    'rate(router_orders_total{state="assigned"}[1m]) > 0',
    'rate(router_orders_total{state="delivered"}[1m]) > 0',
    'rate(router_dispatch_decision_seconds_count{job="dispatch"}[1m]) > 0',
]
DISPATCH_METRICS = re.compile(r"router_dispatch_\w+|router_orders_total")

#: Concrete values for Grafana's variables when a query goes straight to Prometheus.
VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m",
             "$job": "router", "$instance": ".*", "$orders": ".*", "$worker": ".*",
             "$router": ".*", "$gateway": ".*", "${datasource}": "prometheus"}


# --------------------------------------------------------------------------- helpers
def need(binary: str) -> str:
    """Path of ``binary``; skip without it, unless CI is set: then fail."""
    path = shutil.which(binary)
    if path:
        return path
    why = f"{binary} is not installed (Debian package 'prometheus': apt-get install prometheus)"
    if os.environ.get("CI"):
        pytest.fail(f"{why}; CI is set, so this is a failure: .ci/run must install it")
    pytest.skip(f"{why}; skipped outside CI (CI unset)")


def panels(path: Path) -> list[dict]:
    """Every non-row panel of a dashboard, including panels nested in collapsed rows."""
    out = []
    for p in json.loads(path.read_text())["panels"]:
        if p.get("type") == "row":
            out.extend(p.get("panels", []))
        else:
            out.append(p)
    return out


def queries(variables: dict[str, str] | None = None,
            dashboards: list[Path] = DASHBOARDS) -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr with variables filled in) for every target;
    ``variables`` overrides VARIABLES (a concrete instance instead of "All")."""
    values = {**VARIABLES, **(variables or {})}
    out = []
    for path in dashboards:
        for p in panels(path):
            for t in p["targets"]:
                expr = t["expr"]
                for var, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
                    expr = expr.replace(var, value)
                assert "$" not in expr, f"{path.name} / {p['title']}: unfilled variable in {expr}"
                out.append((path.name, p["title"], expr))
    return out


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def http(port: int, path: str, method: str = "GET") -> tuple[int, str, str]:
    """(status, content type, body) of one real HTTP request to 127.0.0.1:port."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def scrape_when(port: int, predicate, what: str, timeout: float = 5.0) -> str:
    """The first /metrics text for which ``predicate(text)`` holds (the collector
    refreshes its snapshot about once a second)."""
    def attempt():
        text = scrape(port)
        return text if predicate(text) else None
    return wait_until(attempt, timeout, what)


def scrape_after(port: int, since: float, timeout: float = 5.0) -> str:
    """The first /metrics text from a snapshot taken after ``since``, a time.monotonic()
    of this process (the router's router_metrics_snapshot_age_seconds counts on the
    same system-wide clock); the collector takes one every REFRESH_SECONDS (0.5 s)."""
    def attempt():
        asked = time.monotonic()
        text = scrape(port)
        age = families(text)["router_metrics_snapshot_age_seconds"].samples[0].value
        return text if asked - age > since else None
    return wait_until(attempt, timeout, "a metrics snapshot taken after the traffic")


def families(text: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(text)}


@contextmanager
def metrics_router(*args: str):
    """A router process with --metrics-port; yields (router, metrics port)."""
    port = free_port()
    r = RouterProcess("--metrics-port", str(port), "--heartbeat-ms", "500", *args).start()
    try:
        wait_until(lambda: _answers(port), 10, "the router's /metrics endpoint")
        yield r, port
    finally:
        r.stop(signal.SIGKILL)


def _answers(port: int) -> bool:
    try:
        return "router_metrics_snapshot_age_seconds" in scrape(port)  # a first snapshot
    except OSError:
        return False


@contextmanager
def service_worker(url: str, service: str):
    """A ServiceWorker thread answering ``service`` requests with the request body."""
    from workers.service import ServiceWorker

    w = ServiceWorker(url, service, lambda body: body, name=f"{service}-test")
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop.is_set,), daemon=True)
    t.start()
    try:
        yield w
    finally:
        stop.set()
        t.join(5)
        w.close()


def contract_problems(fams: dict, contract: dict, where: str) -> list[str]:
    """Deviations of parsed metric families from ``contract``: missing names, types,
    label names, label values outside the bounded sets, histogram buckets."""
    problems = []
    for name, (kind, labels) in contract.items():
        fam = fams.get(name)
        if fam is None:
            problems.append(f"{where}: {name} missing")
            continue
        if fam.type != kind:
            problems.append(f"{where}: {name} is a {fam.type}, the contract says {kind}")
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            names = set(s.labels) - {"le"}
            if names != set(labels):
                problems.append(f"{where}: {s.name} has labels {sorted(names)}, the contract "
                                f"{sorted(labels)}")
                break
            for label, allowed in labels.items():
                if allowed is not None and s.labels[label] not in allowed:
                    problems.append(f"{where}: {s.name}{{{label}={s.labels[label]!r}}} is not "
                                    f"a contract value")
        if name in BUCKETS:
            les = sorted({float(s.labels["le"]) for s in fam.samples
                          if s.name.endswith("_bucket")})
            if les != BUCKETS[name] + [math.inf]:
                problems.append(f"{where}: {name} buckets {les}, the contract {BUCKETS[name]}")
    return problems


@contextmanager
def dispatch_worker(url: str, router_metrics_port: int):
    """The real dispatch worker process (`python -m workers.dispatch.worker`) with its
    /metrics; yields (that port, the process) once the router counts it as a dispatch
    worker."""
    port = free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.dispatch.worker", "--router", url, "--name",
         "dispatch-obs", "--metrics-port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        def up():
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"dispatch worker exited:\n{log.read().decode()}")
            try:
                return http(port, "/readyz")[0] == 200 and \
                    'router_service_workers{service="dispatch"} 1.0' in scrape(router_metrics_port)
            except OSError:
                return False
        wait_until(up, 15, "the dispatch worker's /readyz and the router's worker gauge")
        yield port, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextmanager
def registry_server():
    """Serve this process's default registry, where the order service (imported from
    workers.orders) counts router_dispatch_offers_total and router_orders_total."""
    from prometheus_client import REGISTRY, start_http_server

    import workers.orders  # noqa: F401  (registers the order service's counters)

    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=REGISTRY)
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def city(url: str):
    """The simulated city (its parties and the real order service, workers.sim.city)
    stepping in a thread, small and fast: about 3 orders a second, each placed,
    offered, assigned, picked up and delivered within a few seconds."""
    from workers.sim.city import City, Config

    cfg = Config(seed=3, merchants=6, riders=12, users=40, size_m=1500.0, base_per_min=0.1,
                 start_hour=12.0, speed=300.0, weak_network=0.0, offer_ttl_ms=1000,
                 max_orders=500)
    stop, errors = threading.Event(), []
    c = City(url, cfg)  # connects here: a router that is not there fails the test now

    def run():
        try:
            while not stop.is_set():
                c.step()
                time.sleep(0.01)
        except Exception as exc:  # reported by the test, not lost in the thread
            errors.append(exc)
        finally:
            c.close()

    t = threading.Thread(target=run, name="city", daemon=True)
    t.start()
    try:
        yield c
        assert not errors, f"the city failed: {errors[0]!r}"
    finally:
        stop.set()
        t.join(10)


class Load:
    """Parties on one router, and one round of every kind of traffic the dashboards show:
    reliable order/dispatch/chat to bound addresses (acked), a notice, conflated
    locations, a channel fan-out, a duplicate id, a message that expires unbound, a
    protocol error and a service request."""

    def __init__(self, url: str, stack: ExitStack) -> None:
        from router.client import Endpoint, Sender

        self.url = url
        self.sender = stack.enter_context(Sender(url, "obs-orders"))
        self.merchant = stack.enter_context(Endpoint(url, ["merchant:obs1"]))
        self.rider = stack.enter_context(Endpoint(url, ["rider:obs1"]))
        self.gateway = stack.enter_context(
            Endpoint(url, ["user:obs1", "user:obs2", "user:obs3"], role=Role.GATEWAY, name="gw"))
        self.sender.join("order:obs1", ["user:obs1", "merchant:obs1", "rider:obs1"])
        self.round_no = 0

    def round(self) -> None:
        s, n = self.sender, self.round_no
        self.round_no += 1
        ids = [s.send("merchant:obs1", {"order": n}, kind="order.created"),
               s.send("rider:obs1", {"order": n}, kind="dispatch.offer",
                      msg_class=MsgClass.DISPATCH, ttl_ms=10_000),
               s.send("user:obs1", {"text": "no scallions"}, kind="chat", msg_class=MsgClass.CHAT),
               s.send("order:obs1", {"order": n}, kind="order.picked_up", channel=True)]
        s.send("user:obs2", {"eta": 5}, kind="notice", msg_class=MsgClass.NOTICE)
        for i in range(5):
            s.send("user:obs1", {"x": i, "y": n}, kind="rider.location",
                   msg_class=MsgClass.LOCATION, key="rider:obs1")
        dup = s.send("user:obs3", {"order": n}, kind="order.accepted")
        s.send("user:obs3", {"order": n}, kind="order.accepted", msg_id=dup)  # deduplicated
        s.send(f"user:obs-offline-{n}", {"order": n}, ttl_ms=200)  # nobody binds it: expires
        late = s.send("rider:obs-late", {"order": n}, kind="dispatch.offer",
                      msg_class=MsgClass.DISPATCH, ttl_ms=10_000)  # its rider is offline
        with Peer(self.url) as bad:  # a protocol error (bad signature -> bad_version)
            bad.send(b"GET / HTTP/1.1\r\n")
            bad.recv(timeout=1.0)
        reply = s.request("echo", b'{"order": %d}' % n, ttl_ms=3000)
        assert reply.code == ErrorCode.NONE, reply
        self.settle(ids)
        self.rider_comes_back(late)

    def rider_comes_back(self, msg_id: int, timeout: float = 5.0) -> None:
        """The offline rider connects, takes the message that waited for it, acks, and
        goes offline again: one delivery for the offline-latency histogram."""
        from router.client import Endpoint

        with Endpoint(self.url, ["rider:obs-late"], name="late-rider") as rider:
            deadline = time.monotonic() + timeout
            while (r := self.sender.status(msg_id)) is None or r.status != Status.DELIVERED:
                assert time.monotonic() < deadline, f"the waiting message {msg_id} not delivered"
                while (d := rider.recv(timeout=0.01)) is not None:
                    rider.ack(d)
                rider.flush()
                self.sender.poll(0.01)

    def settle(self, ids: list[int], timeout: float = 5.0) -> None:
        """Receive and ack everything, until every id in ``ids`` is DELIVERED."""
        deadline = time.monotonic() + timeout
        pending = set(ids)
        while pending:
            assert time.monotonic() < deadline, f"not delivered: {pending}"
            for ep in (self.merchant, self.rider, self.gateway):
                while (d := ep.recv(timeout=0.01)) is not None:
                    ep.ack(d)
                ep.flush()
            self.sender.poll(0.01)
            pending = {m for m in pending
                       if (r := self.sender.status(m)) is None or r.status != Status.DELIVERED}


class GatewayLoad:
    """Apps on a real `router gateway` process, and one round of what its dashboard row
    shows: reliable and location deliveries written and acked, a send from an app, a
    returning app resuming after its last sequence, and a forged token closed."""

    def __init__(self, sender, url: str) -> None:
        self.sender, self.url, self.last_seq = sender, url, 0

    def round(self) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        with connect(self.url) as app:  # back after the previous round: resumes
            app.send(json.dumps({"type": "hello", "token": token("user:gw-obs"),
                                 "last_seq": self.last_seq}))
            assert json.loads(app.recv(timeout=5))["type"] == "welcome"
            self.sender.send("user:gw-obs", {"status": "accepted"}, kind="order.accepted")
            self.sender.send("user:gw-obs", {"x": 1}, kind="rider.location",
                             msg_class=MsgClass.LOCATION, key="rider:gw-obs")
            app.send(json.dumps({"type": "send", "id": "c1", "to": "order:gw-obs",
                                 "channel": True, "class": "CHAT", "data": {"text": "hi"}}))
            seen, deadline = set(), time.monotonic() + 5
            while seen != {"ORDER", "LOCATION"}:
                assert time.monotonic() < deadline, f"the app got only {seen}"
                f = json.loads(app.recv(timeout=5))
                if f["type"] == "deliver":
                    seen.add(f["class"])
                    if f["seq"]:
                        self.last_seq = f["seq"]
                        app.send(json.dumps({"type": "ack", "seq": f["seq"]}))
        with connect(self.url) as forged:  # closed: unauthorized
            forged.send(json.dumps({"type": "hello", "token": "not.a.token"}))
            with pytest.raises(ConnectionClosed):
                forged.recv(timeout=5)


def variable_values(prom: "Prometheus", path: Path, v: dict) -> list[str]:
    """The values Grafana offers for query variable ``v``: label_values(selector, label)
    through the series API, or query_result(expr) with the variable's regex applied to
    each result series."""
    query = v["query"]["query"]
    for var, value in VARIABLES.items():
        query = query.replace(var, value)
    if m := re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query):
        res = prom.api("series", **{"match[]": m.group(1)})
        assert res["status"] == "success", (v["name"], res)
        return sorted({s[m.group(2)] for s in res["data"] if m.group(2) in s})
    m = re.fullmatch(r"query_result\((.+)\)", query)
    assert m and v["regex"], f"{path.name}: variable {v['name']}: unsupported query {query}"
    res = prom.query(m.group(1))
    assert res["status"] == "success", (v["name"], res)
    regex = re.compile(v["regex"].strip("/"))
    # Grafana matches the regex against the series as text: name{label="value", ...}.
    texts = ["{" + ", ".join(f'{k}="{val}"' for k, val in r["metric"].items()) + "}"
             for r in res["data"]["result"]]
    return sorted({m.group(1) for t in texts if (m := regex.search(t))})


def concrete_variables(prom: "Prometheus", path: Path) -> dict[str, str]:
    """Each query variable of a dashboard at the first value its query finds in
    Prometheus (as Grafana offers it), regex-escaped as Grafana does."""
    chosen: dict[str, str] = {}
    for v in json.loads(path.read_text())["templating"]["list"]:
        if v["type"] != "query":
            continue
        found = variable_values(prom, path, v)
        assert found, f"{path.name}: variable {v['name']} finds no value"
        if not v.get("includeAll"):
            continue
        # Regex-escaped, and the backslashes doubled inside a PromQL string, as Grafana does.
        chosen[f"${v['name']}"] = re.escape(found[0]).replace("\\", "\\\\")
    return chosen


class Prometheus:
    """A real `prometheus` server in a temporary directory, scraping given targets every
    second and evaluating the router's alert rules every second."""

    def __init__(self, binary: str, targets: dict[str, list[str]], tmp: Path) -> None:
        self.port = free_port()
        self.targets = dict(targets)
        self.config = tmp / "prometheus.yml"
        self._write_config()
        self.log_path = tmp / "prometheus.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self.config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
             "--storage.tsdb.retention.time=1h"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=tmp)
        try:
            wait_until(self._ready, 30, "prometheus to be ready", 0.2)
        except BaseException:
            self.close()
            raise

    def _write_config(self) -> None:
        jobs = "".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: {json.dumps(hosts)}\n"
            for job, hosts in self.targets.items())
        self.config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
            "  evaluation_interval: 1s\n"
            f"rule_files:\n  - {json.dumps(str(RULES))}\n"
            f"scrape_configs:\n{jobs}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, f"prometheus exited:\n{self.log()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params, doseq=True)
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:  # 400/422: a query that does not parse
            return json.loads(exc.read())

    def query(self, expr: str) -> dict:
        return self.api("query", query=expr)

    def values(self, expr: str) -> list[float]:
        res = self.query(expr)
        assert res["status"] == "success", (expr, res)
        return [float(s["value"][1]) for s in res["data"]["result"]]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# --------------------------------------------------------------------------- static checks
def test_dashboards_are_built_from_build_py():
    """The committed JSON is what grafana/build.py writes (one source of truth)."""
    r = subprocess.run([sys.executable, str(GRAFANA / "build.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def check_names(where: str, expr: str) -> list[str]:
    """Problems with the metric names and labels ``expr`` uses, against the contract
    (docs/METRICS.md)."""
    contract = ALL_DOCUMENTED
    common = {"job", "instance", "le"}
    problems, labels_here = [], set(common)
    for m in re.finditer(r"\b((?:router|gateway|process|python)_\w+?)(_total|_bucket|_count|_sum)?\b"
                         r"(\{([^}]*)\})?", expr):
        name, suffix = m.group(1), m.group(2) or ""
        if name not in contract:
            problems.append(f"{where}: {name}{suffix} is not in the metric contract")
            continue
        kind, labels = contract[name]
        labels_here |= set(labels)
        if suffix not in {"counter": {"_total"}, "gauge": {""},
                          "histogram": {"_bucket", "_count", "_sum"}}[kind]:
            problems.append(f"{where}: {name}{suffix} does not fit a {kind}")
        for lm in re.finditer(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', m.group(4) or ""):
            label, op, value = lm.groups()
            if label not in labels and label not in common:
                problems.append(f"{where}: {name} has no label {label}")
            elif (allowed := labels.get(label)) and op in ("=", "=~") and \
                    not set(value.split("|")) <= allowed:
                problems.append(f"{where}: {name}{{{label}{op}{value!r}}} matches no "
                                f"contract value")
    for by in re.finditer(r"\b(?:by|on|without)\s*\(([^)]*)\)", expr):
        for label in filter(None, (x.strip() for x in by.group(1).split(","))):
            if label not in labels_here:
                problems.append(f"{where}: uses label {label}, which no metric there has")
    return problems


def test_dashboards_name_only_contract_metrics_and_labels():
    """Every router_*/gateway_* name a dashboard uses is in the contract, with a suffix that fits
    its type, and every label it filters or groups by exists on it (a typo would show an
    empty panel). The alert rules get the same check in the real-Prometheus test."""
    problems = [p for f, title, expr in queries() for p in check_names(f"{f}/{title}", expr)]
    assert not problems, "\n".join(problems)


def test_provisioning_points_at_the_dashboards_and_datasource():
    # (No YAML parser among the test dependencies: the two files are plain key: value.)
    ds = (GRAFANA / "provisioning/datasources/prometheus.yaml").read_text()
    assert re.search(r"^\s+uid: prometheus$", ds, re.M) and "type: prometheus" in ds
    prov = (GRAFANA / "provisioning/dashboards/dashboards.yaml").read_text()
    assert re.search(r"^\s+type: file$", prov, re.M) and re.search(r"^\s+path: \S+", prov, re.M)
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        ds_var = [v for v in d["templating"]["list"] if v["type"] == "datasource"]
        assert ds_var and ds_var[0]["current"]["value"] == "prometheus", path.name
        for p in panels(path):
            assert p["datasource"]["uid"] == "${datasource}", (path.name, p["title"])
            assert p["targets"], (path.name, p["title"])
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "${datasource}", (path.name, p["title"])
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        assert {t for t in (p["title"] for p in panels(path))} >= \
            {title for f, title in DISPATCH_PANELS if f == path.name}


# --------------------------------------------------------------------------- promtool
def test_promtool_rules():
    """The alert rules pass `promtool check rules` and their unit tests (`promtool test
    rules`); every alert is tested both firing and quiet; the example scrape config that
    loads them is valid."""
    promtool = need("promtool")
    r = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout
    r = subprocess.run([promtool, "check", "config", str(GRAFANA / "prometheus.example.yml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([promtool, "test", "rules", *map(str, RULE_TESTS)], capture_output=True,
                       text=True, cwd=RULES.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("SUCCESS") == len(RULE_TESTS), r.stdout
    # Every alert has at least one case where it fires and one where it stays quiet.
    alerts = set(re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.M))
    cases = re.findall(r"alertname: (\w+)\s+exp_alerts:(.*)",
                       "".join(t.read_text() for t in RULE_TESTS))
    fired = {a for a, rest in cases if rest.strip() != "[]"}
    quiet = {a for a, rest in cases if rest.strip() == "[]"}
    assert len(alerts) >= 6
    assert alerts - fired == set(), f"alerts never tested firing: {alerts - fired}"
    assert alerts - quiet == set(), f"alerts never tested quiet: {alerts - quiet}"


def replied(text: str) -> bool:
    fam = families(text).get("router_service_requests")
    return bool(fam) and any(s.labels.get("outcome") == "replied" and s.value >= 1
                             for s in fam.samples)


def test_promtool_check_metrics():
    """The router's /metrics, with every kind of traffic counted, passes `promtool check
    metrics` (exposition format and naming lint) without a single remark."""
    promtool = need("promtool")
    with metrics_router() as (r, port), ExitStack() as stack, service_worker(r.url, "echo"):
        Load(r.url, stack).round()
        text = scrape_when(port, replied, "the service request to show in /metrics")
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                         text=True)
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), \
        f"promtool check metrics:\n{res.stdout}{res.stderr}"


# --------------------------------------------------------------------------- contract
def test_router_metrics_follow_the_contract():
    """Names, types, label names, label values and histogram buckets of /metrics."""
    with metrics_router() as (r, port), ExitStack() as stack, service_worker(r.url, "echo"):
        Load(r.url, stack).round()
        fams = families(scrape_after(port, time.monotonic()))
    problems = contract_problems(fams, CONTRACT, "router")
    problems += [f"router: {name} is exported but not in docs/METRICS.md"
                 for name in sorted(set(fams) - set(CONTRACT))]
    # Label values the load produced are really there (not just allowed).
    def values(name: str, label: str) -> set:
        return {s.labels[label] for s in fams[name].samples} if name in fams else set()
    for name, label, expected in (
            ("router_messages_received", "class", CLASSES),
            ("router_peers", "role", {"sender", "endpoint", "gateway", "worker"}),
            ("router_service_workers", "service", {"echo"}),
            ("router_errors", "code", {"bad_version"}),
            # Every code and outcome is there from the start, not at its first use.
            ("router_receipts_refused", "code", LABEL_VALUES["code"]),
            ("router_errors", "code", LABEL_VALUES["code"]),
            ("router_service_requests", "outcome",
             METRIC_LABEL_VALUES[("router_service_requests", "outcome")])):
        if not expected <= values(name, label):
            problems.append(f"{name}: {label} values {sorted(values(name, label))}, "
                            f"expected at least {sorted(expected)}")
    assert not problems, "deviations from the metric contract:\n" + "\n".join(problems)


# --------------------------------------------------------------------------- real Prometheus
def test_dashboards_queries_return_data_from_real_prometheus(tmp_path):
    """Every expr of every panel of both dashboards, against a real Prometheus that
    scrapes a real router, a real dispatch worker process and the order service of a
    simulated city, all under load: each parses and returns data; the alert rules load,
    evaluate cleanly, and a healthy system fires none."""
    binary = need("prometheus")
    with ExitStack() as stack:
        router, port = stack.enter_context(metrics_router())
        stack.enter_context(service_worker(router.url, "echo"))
        worker_port, worker = stack.enter_context(dispatch_worker(router.url, port))
        orders_port = stack.enter_context(registry_server())
        ws_url, _, gateway_port = stack.enter_context(start_gateway(router, tmp_path))
        prom = Prometheus(binary, {"router": [f"127.0.0.1:{port}"],
                                   "dispatch": [f"127.0.0.1:{worker_port}"],
                                   "orders": [f"127.0.0.1:{orders_port}"],
                                   "gateway": [f"127.0.0.1:{gateway_port}"]}, tmp_path)
        stack.callback(prom.close)
        wait_until(lambda: sorted(prom.values("up")) == [1.0] * 4, 20,
                 "the first successful scrape of every target")
        # Traffic starts only now, so every counter rises between scrapes.
        stack.enter_context(city(router.url))
        load = Load(router.url, stack)
        apps = GatewayLoad(load.sender, ws_url)
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            load.round()
            apps.round()
            time.sleep(0.1)

        all_queries = queries()
        router_queries = [q for q in all_queries if (q[0], q[1]) not in DISPATCH_PANELS]
        dispatch_queries = [q for q in all_queries if (q[0], q[1]) in DISPATCH_PANELS]
        for f, title, expr in dispatch_queries:
            assert DISPATCH_METRICS.search(expr), \
                f"{f} / {title} is listed as a dispatch panel but queries {expr}"
        for f, title, expr in router_queries:
            assert not DISPATCH_METRICS.search(expr), \
                f"{f} / {title} needs the dispatch service: list it in DISPATCH_PANELS"
        assert len(router_queries) >= 30 and len(dispatch_queries) >= 10

        def has_data(expr: str) -> tuple[bool, str]:
            res = prom.query(expr)
            if res.get("status") != "success":
                return False, f"does not parse: {res.get('error', res)}"
            vals = [float(s["value"][1]) for s in res["data"]["result"]]
            return any(math.isfinite(v) for v in vals), f"no finite value: {vals or 'no series'}"

        def failures() -> list[str]:
            out = []
            for f, title, expr in router_queries:  # every query returns data
                ok, why = has_data(expr)
                if not ok:
                    out.append(f"{f} / {title}: {expr}\n    -> {why}")
            by_panel: dict[str, list] = {}
            for f, title, expr in dispatch_queries:  # every query parses, one per panel has data
                by_panel.setdefault(f"{f} / {title}", []).append((expr, *has_data(expr)))
            for panel, results in by_panel.items():
                out += [f"{panel}: {e}\n    -> {why}" for e, ok, why in results
                        if why.startswith("does not parse")]
                if not any(ok for _, ok, _ in results):
                    out.append(f"{panel}: no query returns data: {[w for *_, w in results]}")
            for expr in DISPATCH_MUST_HAVE_DATA:
                if not has_data(expr)[0]:
                    out.append(f"dispatch series without data: {expr}")
            return out

        # Data appears within a few scrapes (orders take a few seconds to be delivered).
        deadline = time.monotonic() + 45
        while (bad := failures()) and time.monotonic() < deadline:
            load.round()
            apps.round()
            time.sleep(0.5)
        assert not bad, "dashboard queries without data:\n" + "\n".join(bad)

        # Template variables find values (checked in concrete_variables below).

        # Every panel again with each instance variable at its first real value instead
        # of "All" (a variable that selects another process's instance empties panels).
        for path in DASHBOARDS:
            chosen = concrete_variables(prom, path)
            for f, title, expr in queries(chosen, [path]):
                ok, why = has_data(expr)
                if not ok and (f, title) not in DISPATCH_PANELS:
                    bad.append(f"{f} / {title} with {chosen}: {expr}\n    -> {why}")
            for title in {t for f, t in DISPATCH_PANELS if f == path.name}:
                results = [has_data(e)[0] for f, t, e in queries(chosen, [path]) if t == title]
                if not any(results):
                    bad.append(f"{path.name} / {title} with {chosen}: no query returns data")
        assert not bad, "dashboard queries without data:\n" + "\n".join(bad)

        # The dispatch worker's and the order service's metrics follow the contract too,
        # and docs/METRICS.md lists exactly what the three processes export.
        worker_fams, orders_fams = families(scrape(worker_port)), families(scrape(orders_port))
        fams = {**worker_fams, **orders_fams}
        problems = contract_problems(fams, DISPATCH_CONTRACT, "dispatch/orders")
        problems += contract_problems(worker_fams, PROCESS_CONTRACT, "dispatch worker")
        gateway_fams = families(scrape(gateway_port))
        problems += contract_problems(gateway_fams, {**GATEWAY_CONTRACT, **PROCESS_CONTRACT},
                                      "gateway")
        router_fams = families(scrape(port))
        for where, got in (("router", router_fams), ("dispatch worker", worker_fams),
                           ("order service", orders_fams), ("gateway", gateway_fams)):
            problems += [f"{where}: {name} is exported but not in docs/METRICS.md"
                         for name in sorted(set(got) - set(ALL_DOCUMENTED))
                         if name.removesuffix("_created") not in ALL_DOCUMENTED]
        exported = set(router_fams) | set(worker_fams) | set(orders_fams) | set(gateway_fams)
        # (a Redis store's router is scraped by tests/test_redis_store.py)
        problems += [f"docs/METRICS.md lists {name}, which no process exports"
                     for name in sorted(set(ALL_DOCUMENTED) - set(STORE_CONTRACT) - exported)]
        assert not problems, "deviations from the metric contract:\n" + "\n".join(problems)

        # The alert rules load into the real server, name only contract metrics, and
        # evaluate without errors; a healthy system fires none of them.
        def evaluated():
            rs = [rule for g in prom.api("rules")["data"]["groups"] for rule in g["rules"]]
            return rs if rs and all(not r["lastEvaluation"].startswith("0001") for r in rs) \
                else None
        rs = wait_until(evaluated, 10, "the alert rules to be evaluated")
        names = set(re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.M))
        assert {r["name"] for r in rs} == names
        problems = [p for r in rs for p in check_names(f"rule {r['name']}", r["query"])]
        assert not problems, "\n".join(problems)
        bad = [(r["name"], r["health"], r.get("lastError")) for r in rs if r["health"] != "ok"]
        assert not bad, bad
        for r in rs:
            assert r["labels"].get("severity") in {"critical", "warning"}, r["name"]
            assert r["annotations"].get("summary") and r["annotations"].get("description")
        firing = [r["name"] for r in rs if r["state"] == "firing"]
        assert not firing, f"a healthy system fires {firing}"
        # Router up, a dispatch worker registered: these two are not even pending (the
        # others depend on latencies of this machine, and their `for` outlasts the test).
        state = {r["name"]: r["state"] for r in rs}
        assert state["RouterDown"] == state["RouterDispatchWorkersDown"] == "inactive", state

        # And they do react to the real exporter: the dispatch worker stops (the router's
        # gauge drops to 0 or the series goes), then the router dies (up == 0).
        def alert_state(name: str) -> str:
            return {r["name"]: r["state"] for g in prom.api("rules")["data"]["groups"]
                    for r in g["rules"]}[name]
        worker.terminate()
        wait_until(lambda: alert_state("RouterDispatchWorkersDown") == "pending", 15,
                 "RouterDispatchWorkersDown to be pending after the worker stopped", 0.25)
        router.stop(signal.SIGKILL)
        wait_until(lambda: alert_state("RouterDown") == "pending", 15,
                 "RouterDown to be pending after the router was killed", 0.25)


# --------------------------------------------------------------------------- histograms
def bucket_counts(text: str, name: str, cls: str) -> list[tuple[float, float]]:
    """Cumulative (le, count) of one class of a histogram in /metrics text."""
    fam = families(text)[name]
    out = [(float(s.labels["le"]), s.value) for s in fam.samples
           if s.name == name + "_bucket" and s.labels.get("class") == cls]
    return sorted(out)


def bucket_index(value: float, bounds: list[float]) -> int:
    """Index of the bucket holding ``value`` (len(bounds): +Inf)."""
    return next((i for i, b in enumerate(bounds) if value <= b), len(bounds))


def histogram_quantile_bucket(before, after, q: float) -> int:
    """Index of the bucket holding the q-quantile of the observations between snapshots."""
    delta = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
    total = delta[-1][1]
    assert total > 0
    return next(i for i, (le, n) in enumerate(delta) if n >= q * total)


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def test_histogram_agrees_with_client_measurement():
    """p50/p99 of router_delivery_latency_seconds (accepted -> ack) agree within one
    bucket with the client's send -> ack time; the hop histogram is no slower than the
    client's send -> receive. The recipient holds each ack for a varying time (1.5 to
    35 ms) so the latencies spread over several buckets."""
    from router.client import Endpoint, Sender

    n = 150
    holds = [0.0015, 0.0035, 0.007, 0.017, 0.035]
    with metrics_router() as (r, port), \
            Endpoint(r.url, ["merchant:7"]) as merchant, Sender(r.url, "lat") as s:
        # Warm up the path (connections, first journal segment), outside the measurement.
        warm = [s.send("merchant:7", b"warm") for _ in range(5)]
        for _ in warm:
            d = merchant.recv(timeout=5)
            assert d is not None, "warm-up message not delivered"
            merchant.ack(d)
        merchant.flush()
        for mid in warm:
            assert s.wait(mid, Status.DELIVERED, timeout=5).status == Status.DELIVERED
        name = "router_delivery_latency_seconds"
        wait_until(lambda: bucket_counts(scrape(port), name, "order")[-1][1] >= 5, 5,
                 "the warm-up deliveries in the histogram")
        text = scrape(port)
        before = bucket_counts(text, name, "order")
        hop_before = bucket_counts(text, "router_hop_latency_seconds", "order")
        to_recv, to_ack = [], []
        for i in range(n):
            t0 = time.perf_counter()
            mid = s.send("merchant:7", {"i": i}, kind="order.created")
            d = merchant.recv(timeout=5)
            assert d is not None and d.msg_id == mid
            t1 = time.perf_counter()
            time.sleep(holds[i % len(holds)])
            merchant.ack(d)
            merchant.flush()
            t2 = time.perf_counter()
            assert s.wait(mid, Status.DELIVERED, timeout=5).status == Status.DELIVERED
            to_recv.append(t1 - t0)
            to_ack.append(t2 - t0)
        want = before[-1][1] + n
        text = scrape_when(port, lambda t: bucket_counts(t, name, "order")[-1][1] >= want,
                           "all deliveries in the histogram")
    after = bucket_counts(text, name, "order")
    hop_after = bucket_counts(text, "router_hop_latency_seconds", "order")
    assert after[-1][1] == want, "other deliveries counted during the measurement"
    delivery_bounds, hop_bounds = BOUNDS["delivery"], BOUNDS["hop"]
    for q in (0.5, 0.99):
        # Within 25% (one bucket of about 1.25x, either side) or 1 ms of the client's
        # measurement: the router's clock starts at ACCEPTED and stops at the ack's
        # arrival, the client's at send and at its flush.
        router_b = histogram_quantile_bucket(before, after, q)
        lo = ([0.0] + delivery_bounds)[router_b]
        hi = (delivery_bounds + [math.inf])[router_b]
        client = quantile(to_ack, q)
        assert lo <= client * 1.25 + 0.001 and hi >= client / 1.25 - 0.001, (
            f"p{round(q * 100)} delivery latency: router bucket ({lo}, {hi}], client "
            f"measured {client * 1000:.2f} ms")
        hop_b = histogram_quantile_bucket(hop_before, hop_after, q)
        client_hop_b = bucket_index(quantile(to_recv, q), hop_bounds)
        assert hop_b <= client_hop_b + 1, (
            f"p{round(q * 100)} hop latency: router bucket le={hop_after[hop_b][0]} is above "
            f"the client's send->receive {quantile(to_recv, q) * 1e6:.0f} us")


# --------------------------------------------------------------------------- health endpoints
def test_ops_endpoints_of_a_router_process():
    """A real router process's ops port serves /metrics, /healthz and /readyz, answers
    404 for every other path (it used to answer every path with the metrics) and 405
    for methods other than GET/HEAD."""
    with metrics_router() as (r, port):
        status, ctype, body = http(port, "/metrics")
        assert status == 200 and ctype.startswith("text/plain") and "router_build_info{" in body
        assert "process_cpu_seconds_total" in body and "process_open_fds" in body
        wait_until(lambda: http(port, "/readyz")[0] == 200, 5, "/readyz 200")
        assert http(port, "/healthz")[:2] == (200, "text/plain; charset=utf-8")
        for path in ("/", "/metricsx", "/metrics/extra", "/health", "/favicon.ico"):
            status, _, body = http(port, path)
            assert status == 404 and "router_" not in body, (path, status, body)
        assert http(port, "/metrics?name[]=x")[0] == 200  # a query string is not a new path
        assert http(port, "/metrics", "POST")[0] == 405
        assert r.stop() == 0


def test_readyz_follows_the_router_lifecycle(tmp_path):
    """/readyz of a real Router (in this process, real sockets and HTTP): 503 after the
    journal replay while the loop is not serving yet, 200 while it serves and accepts
    sends, 503 from the moment it is asked to stop; /healthz is 200 throughout."""
    from router.client import Sender
    from router.config import Settings
    from router.server import Router

    url, port = f"tcp://127.0.0.1:{free_port()}", free_port()
    router = Router(Settings(bind=[url], data_dir=str(tmp_path), metrics_port=port,
                             summary_interval=0))
    status, _, why = http(port, "/readyz")
    assert (status, why) == (503, "not ready yet\n")
    assert http(port, "/healthz")[0] == 200
    t = threading.Thread(target=router.serve, kwargs={"install_signals": False}, daemon=True)
    t.start()
    try:
        wait_until(lambda: http(port, "/readyz")[0] == 200, 5, "/readyz 200 once serving")
        with Sender(url, "ready-probe") as s:  # ready means it accepts sends
            mid = s.send("merchant:ready", b"x")
            assert s.wait(mid, Status.ACCEPTED, timeout=5).status == Status.ACCEPTED
        assert http(port, "/healthz")[2] == "main loop running\n"
    finally:
        router.stop()
    answers = []
    while t.is_alive() or not answers:  # until the port closes with the loop
        try:
            answers.append(http(port, "/readyz")[:3:2])
        except OSError:
            break
    t.join(10)
    assert not t.is_alive()
    assert all(a == (503, "stopping\n") for a in answers), answers
    with pytest.raises(OSError):
        http(port, "/readyz")


def test_healthz_reports_a_stalled_loop():
    """/healthz over real HTTP: 200 while the loop beats, 503 (saying how long) once it
    has not for longer than the stall limit."""
    from prometheus_client import CollectorRegistry

    from router import httpd

    health = httpd.Health(stall_seconds=0.3)
    server = httpd.serve(free_port(), "127.0.0.1", CollectorRegistry(), health)
    port = server.server_address[1]
    try:
        assert http(port, "/healthz")[0] == 200  # starting
        health.beat()
        assert http(port, "/healthz")[:3:2] == (200, "main loop running\n")
        time.sleep(0.6)
        status, _, why = http(port, "/healthz")
        assert status == 503 and why.startswith("main loop stalled: no pass for"), why
        health.beat()
        assert http(port, "/healthz")[0] == 200
    finally:
        server.close()


def test_dispatch_worker_is_ready_only_after_ready_sent():
    """The dispatch worker's ops port: /readyz 503 while it waits for a router (no
    READY sent), /healthz 200; with a router, /readyz 200 once the router counts it."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.dispatch.worker", "--router",
         f"tcp://127.0.0.1:{free_port()}", "--metrics-port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        def answers():
            try:
                return http(port, "/readyz")
            except OSError:
                return None
        status, _, why = wait_until(answers, 10, "the worker's ops port")
        assert (status, why) == (503, "not ready yet\n")
        assert http(port, "/healthz")[0] == 200
        assert http(port, "/nothing")[0] == 404
    finally:
        proc.kill()
        proc.wait()
    with metrics_router() as (r, router_port), dispatch_worker(r.url, router_port) as (wport, _):
        assert http(wport, "/readyz")[:3:2] == (200, "ready\n")
        assert "router_dispatch_decision_seconds" in http(wport, "/metrics")[2]


# --------------------------------------------------------------------------- wiring
def sample(text: str, name: str, **labels) -> float:
    """The value of one sample in /metrics text (0.0 when absent)."""
    for fam in families(text).values():
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_errors_refusals_and_offline_figures_reach_their_series():
    """The core's figures land in the series METRICS.md names: errors counted before the
    per-peer rate limit and the suppressed part apart, and past the limit the rest of the
    second quarantined (ignored, counted apart); a REFUSED receipt under its code;
    a message waiting for an offline rider shows in the offline gauges and, once acked,
    in the offline delivery histogram only (not in the online one nor in hop latency)."""
    from router.client import Endpoint, Sender

    n_bad = 200
    with metrics_router("--errors-per-second", "20") as (r, port), Sender(r.url, "wire") as s:
        with Peer(r.url) as bad:  # 200 bad frames in well under a second
            for _ in range(n_bad):
                bad.send(b"GET / HTTP/1.1\r\n")
            text = scrape_when(port, lambda t: sample(
                t, "router_errors_total", code="bad_version")
                + sample(t, "router_quarantined_messages_total") >= n_bad,
                "200 bad_version errors or quarantined messages")
        limit = 20  # bad messages a second before the rest of it is ignored
        errors = sample(text, "router_errors_total", code="bad_version")
        assert errors >= limit + 1
        assert errors + sample(text, "router_quarantined_messages_total") == n_bad
        assert sample(text, "router_errors_suppressed_total") >= errors - 21

        refused = s.send("order:none", b"x", channel=True)  # nobody joined it
        assert s.wait(refused, Status.REFUSED, timeout=5).status == Status.REFUSED
        waiting = s.send("rider:wire", b"offer", msg_class=MsgClass.DISPATCH, ttl_ms=60_000)
        assert s.wait(waiting, Status.ACCEPTED, timeout=5).status == Status.ACCEPTED
        time.sleep(1.2)
        text = scrape_when(port, lambda t: sample(t, "router_offline_addresses") == 1,
                           "the offline address in the gauge")
        assert sample(text, "router_receipts_refused_total", code="unknown_channel") == 1
        # 1.2 s old, as of a snapshot up to REFRESH_SECONDS (0.5 s) older than the scrape
        assert sample(text, "router_oldest_queued_message_age_seconds") >= 0.6
        hop = sample(text, "router_hop_latency_seconds_count", **{"class": "dispatch"})
        with Endpoint(r.url, ["rider:wire"]) as rider:
            d = rider.recv(timeout=5)
            assert d is not None and d.msg_id == waiting
            rider.ack(d)
            rider.flush()
            assert s.wait(waiting, Status.DELIVERED, timeout=5).status == Status.DELIVERED
            text = scrape_when(port, lambda t: sample(
                t, "router_offline_delivery_latency_seconds_count", **{"class": "dispatch"}) == 1,
                "the offline delivery in its histogram")
        assert sample(text, "router_offline_delivery_latency_seconds_sum",
                      **{"class": "dispatch"}) >= 1.0
        assert sample(text, "router_delivery_latency_seconds_count", **{"class": "dispatch"}) == 0
        assert sample(text, "router_hop_latency_seconds_count", **{"class": "dispatch"}) == hop
        assert sample(text, "router_offline_addresses") == 0
        assert sample(text, "router_oldest_queued_message_age_seconds") == 0
