"""`router demo`: the router, dispatch workers and a simulated city on one machine.

Starts `router serve` (journal and history in a fresh data directory, metrics on), two
dispatch worker processes, and the city (merchants, riders, users and the order
service) in this process; prints live figures every second and a summary on Ctrl-C.
No external service is needed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass

from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families

from workers.sim.city import City, Config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Scrape:
    """The router's metrics at one moment, reduced to what the display shows."""

    t: float
    by_class: dict[str, float]
    delivered: float
    redeliveries: float
    backlog: float
    queued: float
    delivery_buckets: list[tuple[float, float]]

    @classmethod
    def take(cls, url: str) -> "Scrape | None":
        """Scrape ``url`` once; None if the router does not answer."""
        try:
            text = urllib.request.urlopen(url, timeout=0.5).read().decode()
        except OSError:
            return None
        by_class, buckets = {}, {}
        vals = {"router_messages_delivered_total": 0.0, "router_redeliveries_total": 0.0,
                "router_offline_backlog_messages": 0.0, "router_queued_messages": 0.0,
                "router_metrics_snapshot_age_seconds": 0.0}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == "router_messages_received_total":
                    by_class[s.labels["class"]] = s.value
                elif s.name == "router_delivery_latency_seconds_bucket":
                    le = float(s.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + s.value
                elif s.name in vals:
                    vals[s.name] += s.value
        # the time the router took these figures, so rates divide by the right interval
        taken = time.monotonic() - vals["router_metrics_snapshot_age_seconds"]
        return cls(taken, by_class, vals["router_messages_delivered_total"],
                   vals["router_redeliveries_total"], vals["router_offline_backlog_messages"],
                   vals["router_queued_messages"], sorted(buckets.items()))


def quantile(q: float, now: list[tuple[float, float]], before: list[tuple[float, float]]) -> float:
    """histogram_quantile over the bucket increase between two scrapes (upper bound)."""
    prev = dict(before)
    inc = [(le, n - prev.get(le, 0.0)) for le, n in now]
    total = inc[-1][1] if inc else 0
    if total <= 0:
        return float("nan")
    for le, n in inc:
        if n >= q * total:
            return le
    return float("inf")


class Demo:
    """Processes of the demo and the live display."""

    def __init__(self, cfg: Config, workers: int, data_dir: str | None) -> None:
        self.cfg = cfg
        self.tmp = None if data_dir else tempfile.mkdtemp(prefix="router-demo-")
        self.data_dir = data_dir or self.tmp
        self.port, self.metrics_port = _free_port(), _free_port()
        self.sim_metrics_port = _free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        self.workers = workers
        self.worker_metrics: list[int] = []

    def start(self) -> City:
        """Start the router and the dispatch workers; return the simulated city on them."""
        env = {**os.environ}
        log = open(os.path.join(self.data_dir, "router.log"), "ab")
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "router", "serve", "--bind", self.url, "--data-dir",
             self.data_dir, "--metrics-port", str(self.metrics_port), "--log-level", "info"],
            stdout=log, stderr=subprocess.STDOUT, env=env))
        time.sleep(0.8)
        for i in range(self.workers):
            wlog = open(os.path.join(self.data_dir, f"dispatch-{i}.log"), "ab")
            port = _free_port()
            self.worker_metrics.append(port)
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "workers.dispatch.worker", "--router", self.url,
                 "--name", f"dispatch-{i}", "--metrics-port", str(port)],
                stdout=wlog, stderr=subprocess.STDOUT, env=env))
        time.sleep(1.0)
        start_http_server(self.sim_metrics_port, addr="127.0.0.1")
        return City(self.url, self.cfg)

    def stop(self) -> None:
        """SIGTERM every process started (SIGKILL after 10 s), remove the scratch dir."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _line(city: City, now: Scrape | None, prev: Scrape | None, placed_before: int) -> str:
    svc = city.service
    counts = {o.state: 0 for o in svc.orders.values()}
    for o in svc.orders.values():
        counts[o.state] += 1
    parts = [f"{city.clock.label()}", f"orders +{city.placed - placed_before}/s",
             f"open {len(svc.orders)} done {len(city.delivered)}"]
    if now and prev:
        dt = max(now.t - prev.t, 1e-6)
        rate = {c: (now.by_class.get(c, 0) - prev.by_class.get(c, 0)) / dt
                for c in ("order", "dispatch", "chat", "location")}
        parts.append("msg/s " + " ".join(f"{c} {v:.0f}" for c, v in rate.items()))
        p50 = quantile(0.5, now.delivery_buckets, prev.delivery_buckets)
        p99 = quantile(0.99, now.delivery_buckets, prev.delivery_buckets)
        parts.append(f"delivery p50<={p50 * 1000:.0f}ms p99<={p99 * 1000:.0f}ms"
                     if p50 == p50 else "delivery p50 - p99 -")
        parts.append(f"redeliv {now.redeliveries - prev.redeliveries:.0f} "
                     f"backlog {now.backlog:.0f}")
    parts.append(f"offers ok {svc.offers['accepted']} reassigned {svc.offers['reassigned']}")
    return " | ".join(parts)


def summary(city: City, seconds: float) -> str:
    """The end-of-run report."""
    done = city.delivered
    mins = [(o.times["delivered"] - o.times["placed"]) / 60 for o in done]
    late = sum(1 for o in done if o.times["delivered"] > o.promised_at)
    offers = city.service.offers
    lines = [
        f"ran {seconds:.0f} s real, until simulated {city.clock.label()}",
        f"orders placed {city.placed}, delivered {len(done)}, cancelled {len(city.cancelled)}, "
        f"still open {city.open_orders()}",
        f"delivery time (simulated) mean {sum(mins) / len(mins):.1f} min, late {late}"
        if mins else "no order finished yet",
        "offers: " + ", ".join(f"{k} {offers[k]}" for k in
                               ("sent", "accepted", "rejected", "timed_out", "reassigned",
                                "escalated")),
        "received by parties: " + ", ".join(f"{k} {v}" for k, v in city.received.items()),
    ]
    return "\n".join(lines)


def run(cfg: Config, seconds: float | None, workers: int = 2, data_dir: str | None = None) -> int:
    """Run the demo until Ctrl-C (or ``seconds``); print live lines and a summary."""
    demo = Demo(cfg, workers, data_dir)
    stop = []
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    city = None
    t0 = time.monotonic()
    try:
        city = demo.start()
        workers = ", ".join(f"http://127.0.0.1:{p}/metrics" for p in demo.worker_metrics)
        print(f"router on {demo.url}; metrics: router http://127.0.0.1:{demo.metrics_port}"
              f"/metrics, orders http://127.0.0.1:{demo.sim_metrics_port}/metrics, "
              f"dispatch workers {workers}; data in {demo.data_dir}. Ctrl-C stops.", flush=True)
        scrape_url = f"http://127.0.0.1:{demo.metrics_port}/metrics"
        prev, next_print, placed = Scrape.take(scrape_url), time.monotonic() + 1, 0
        while not stop and (seconds is None or time.monotonic() - t0 < seconds):
            city.step()
            time.sleep(0.01)
            if time.monotonic() >= next_print:
                now = Scrape.take(scrape_url)
                print(_line(city, now, prev, placed), flush=True)
                prev, placed, next_print = now, city.placed, next_print + 1
        print("\n" + summary(city, time.monotonic() - t0), flush=True)
        return 0
    finally:
        if city is not None:
            city.close()
        demo.stop()
