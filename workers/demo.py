"""`router demo`: the router, dispatch workers and a simulated city on one machine.

Starts `router serve` (journal and history in a data directory: ``--data-dir``, kept,
or a temporary one removed on exit; metrics on), dispatch worker processes, and the city
(merchants, riders, users and the order service) in this process; prints live figures
every second and a summary at the end (``--seconds``, Ctrl-C or SIGTERM). The processes'
logs, and this process's own, are files in the data directory, so the console shows
only the figures. No external service is needed.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families

from router.ports import free_port
from workers.demo_trust import DemoTrust
from workers.orders import IGNORED_REASONS
from workers.sim.city import City, Config
from workers.sim.latency import percentile

READY_TIMEOUT_S = 20.0
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


class DemoError(Exception):
    """The demo cannot start; the message says what was wrong and what to do."""


def _die_with_parent() -> None:
    """In a child before exec (Linux): SIGTERM it when the demo dies, even by SIGKILL,
    so no router or worker outlives a killed demo. Elsewhere a no-op."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def open_data_dir(path: str | None) -> tuple[Path, bool]:
    """The data directory and whether it is kept: ``path`` (created if missing, checked
    writable) or, with None, a fresh temporary directory that is removed on exit."""
    if path is None:
        return Path(tempfile.mkdtemp(prefix="router-demo-")), False
    d = Path(path).expanduser()
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".router-demo-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except FileExistsError:
        raise DemoError(f"--data-dir {path} exists and is not a directory; "
                        "give a directory path") from None
    except OSError as exc:
        raise DemoError(f"cannot use --data-dir {path}: {exc.strerror or exc}; "
                        "give a directory you can create and write") from None
    return d, True


NEXT_ORDER_FILE = "demo-next-order"


def first_order(data_dir: Path) -> int:
    """The first order id for a run in ``data_dir``: after the last run's orders, so a
    kept data dir's history never mixes two runs under one order id."""
    try:
        return max(int((data_dir / NEXT_ORDER_FILE).read_text().strip()), 1)
    except (OSError, ValueError):
        return 1


def save_next_order(data_dir: Path, city: City) -> None:
    """Remember where the next run's order ids start."""
    try:
        (data_dir / NEXT_ORDER_FILE).write_text(f"{city.cfg.first_order + city.placed}\n")
    except OSError:
        pass  # the data dir became unwritable: the next run may reuse ids, nothing worse


@dataclass
class Child:
    """A process of the demo and the file its output goes to."""

    name: str
    proc: subprocess.Popen
    log: Path

    def exited(self) -> str:
        """Why it is gone: the signal that killed it, or its exit code and the last line
        it logged (where a failing process says why)."""
        code = self.proc.returncode
        if code < 0:
            return f"{self.name} was killed by {signal.Signals(-code).name} (log {self.log})"
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        last = f": {lines[-1].strip()}" if lines else ""
        return f"{self.name} exited with code {code}{last} (log {self.log})"


def wait_ready(procs: list[Child], urls: list[str], timeout: float = READY_TIMEOUT_S) -> None:
    """Wait until every URL answers HTTP 200, failing early if a process exits.

    The URLs are the processes' ``/readyz`` (router/httpd.py): 200 once the router has
    replayed its journal and serves, once a worker has said READY; 503 before.
    """
    deadline = time.monotonic() + timeout
    waiting = list(urls)
    while waiting:
        for child in procs:
            if child.proc.poll() is not None:
                raise DemoError(f"{child.exited()} while starting")
        try:
            with urllib.request.urlopen(waiting[0], timeout=0.5) as resp:
                if resp.status == 200:
                    waiting.pop(0)
                    continue
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise DemoError(f"{waiting[0]} did not answer within {timeout:.0f} s; "
                            "see the logs in the data directory")
        time.sleep(0.1)


@dataclass
class Scrape:
    """The router's metrics at one moment, reduced to what the display shows."""

    t: float
    by_class: dict[str, float]
    delivered: float
    redeliveries: float
    backlog: float
    queued: float

    @classmethod
    def take(cls, url: str) -> "Scrape | None":
        """Scrape ``url`` once; None if the router does not answer."""
        try:
            text = urllib.request.urlopen(url, timeout=0.5).read().decode()
        except OSError:
            return None
        by_class: dict[str, float] = {}
        vals = {"router_messages_delivered_total": 0.0, "router_redeliveries_total": 0.0,
                "router_offline_backlog_messages": 0.0, "router_queued_messages": 0.0,
                "router_metrics_snapshot_age_seconds": 0.0}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == "router_messages_received_total":
                    by_class[s.labels["class"]] = s.value
                elif s.name in vals:
                    vals[s.name] += s.value
        # the time the router took these figures, so rates divide by the right interval
        taken = time.monotonic() - vals["router_metrics_snapshot_age_seconds"]
        return cls(taken, by_class, vals["router_messages_delivered_total"],
                   vals["router_redeliveries_total"], vals["router_offline_backlog_messages"],
                   vals["router_queued_messages"])


class Demo:
    """Processes of the demo: the router and the dispatch workers."""

    def __init__(self, workers: int, data_dir: Path, kept: bool) -> None:
        self.data_dir, self.kept = data_dir, kept
        self.port, self.metrics_port = free_port(), free_port()
        self.sim_metrics_port = free_port()
        self.web_port, self.gateway_metrics_port = free_port(), free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.procs: list[Child] = []
        self.workers = workers
        self.worker_metrics: list[int] = []
        #: the demo's own keys and credentials: it runs the secure path
        self.trust = DemoTrust(data_dir)

    @property
    def metrics_url(self) -> str:
        """The router's metrics endpoint."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> None:
        """Start the router and the dispatch workers, and wait until they answer."""
        self._spawn("router", "router.log",
                    ["-m", "router", "serve", "--bind", self.url, "--data-dir",
                     str(self.data_dir), "--metrics-port", str(self.metrics_port),
                     "--log-level", "info", *self.trust.serve_flags()])
        wait_ready(self.procs, [f"http://127.0.0.1:{self.metrics_port}/readyz"])
        for i in range(self.workers):
            port = free_port()
            self.worker_metrics.append(port)
            self._spawn(f"dispatch worker {i}", f"dispatch-{i}.log",
                        ["-m", "workers.dispatch.worker", "--router", self.url,
                         "--name", f"dispatch-{i}", "--metrics-port", str(port),
                         *self.trust.cli("dispatch")])
        self._spawn("gateway", "gateway.log",
                    ["-m", "router", "gateway", "--router", self.url, "--listen",
                     f"127.0.0.1:{self.web_port}", "--credentials",
                     str(self.trust.credentials), "--name", "web-gateway", "--demo-tokens",
                     "--metrics-port", str(self.gateway_metrics_port),
                     *self.trust.cli("web-gateway")])
        wait_ready(self.procs, [f"http://127.0.0.1:{p}/readyz" for p in
                                [*self.worker_metrics, self.gateway_metrics_port]])
        start_http_server(self.sim_metrics_port, addr="127.0.0.1")

    def _spawn(self, name: str, log_name: str, args: list[str]) -> None:
        path = self.data_dir / log_name
        with open(path, "ab") as log:
            proc = subprocess.Popen([sys.executable, *args], stdout=log,
                                    stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        self.procs.append(Child(name, proc, path))

    def gone(self) -> str | None:
        """Why a process of the demo has exited, if one has."""
        for child in self.procs:
            if child.proc.poll() is not None:
                return child.exited()
        return None

    def stop(self) -> None:
        """SIGTERM every process started (SIGKILL after 10 s); remove a temporary dir,
        unless a process died on its own (its log is what the user needs then)."""
        failed = self.gone() is not None
        for p in (c.proc for c in self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in (c.proc for c in self.procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        if failed and not self.kept:
            print(f"router demo: logs kept in {self.data_dir}", file=sys.stderr, flush=True)
        elif not self.kept:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def banner(self) -> str:
        """Where everything is, printed once at start."""
        workers = ", ".join(f"http://127.0.0.1:{p}/metrics" for p in self.worker_metrics)
        where = ("kept" if self.kept else "temporary, removed on exit")
        return (f"router on {self.url} (CURVE; keys and credentials in "
                f"{self.trust.dir.parent})\n"
                f"metrics: router {self.metrics_url}, orders "
                f"http://127.0.0.1:{self.sim_metrics_port}/metrics, dispatch workers {workers}\n"
                f"web apps: http://127.0.0.1:{self.web_port}/user#address=user:1 (place an "
                f"order), /merchant#address=merchant:1, /rider#address=rider:1 (a person "
                f"takes that party over from the simulation)\n"
                f"data and logs in {self.data_dir} ({where})\nCtrl-C stops.")


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f}ms" if ms < 10 else f"{ms:.0f}ms"


def e2e_text(samples: list[float]) -> str:
    """Measured send-to-receive percentiles of the order service's messages."""
    if not samples:
        return "order msgs e2e p50 - p99 - (none received)"
    return (f"order msgs e2e p50 {_ms(percentile(samples, 0.5))} "
            f"p99 {_ms(percentile(samples, 0.99))} (n {len(samples)})")


class Display:
    """The live console line: figures over the last interval, from the router's metrics
    and from the city's own counts and latency samples."""

    def __init__(self, city: City, scrape_url: str) -> None:
        self.city, self.scrape_url = city, scrape_url
        self.prev = Scrape.take(scrape_url)
        self.t = time.monotonic()
        self.placed, self.asked, self.ignored = self._counts()
        self.e2e: list[float] = []  # every sample of the run, for the summary

    def _counts(self) -> tuple[int, int, int]:
        """Orders placed, dispatch requests made, messages ignored, so far."""
        svc = self.city.service
        asked = svc.dispatch["first"] + svc.dispatch["more"] + svc.dispatch["retry"]
        return self.city.placed, asked, sum(svc.ignored.values())

    def line(self) -> str:
        """One line for the interval since the previous call (rates per second)."""
        city = self.city
        now, t = Scrape.take(self.scrape_url), time.monotonic()
        per_s = 1 / max(t - self.t, 1e-6)
        counts = self._counts()
        placed, asked, ignored = (c - p for c, p in zip(counts, (self.placed, self.asked,
                                                                  self.ignored)))
        samples = city.latency.take()
        self.e2e.extend(samples)
        parts = [city.clock.label(),
                 f"orders +{placed * per_s:.0f}/s open {city.open_orders()} "
                 f"delivered {len(city.delivered)} cancelled {len(city.cancelled)}"]
        if now and self.prev:
            dt = max(now.t - self.prev.t, 1e-6)
            rate = {c: (now.by_class.get(c, 0) - self.prev.by_class.get(c, 0)) / dt
                    for c in ("order", "dispatch", "chat", "location")}
            parts.append("msg/s " + " ".join(f"{c} {v:.0f}" for c, v in rate.items()))
        parts.append(e2e_text(samples))
        parts.append(f"dispatch asks {asked * per_s:.0f}/s")
        if now and self.prev:
            parts.append(f"redeliv +{now.redeliveries - self.prev.redeliveries:.0f} "
                         f"backlog {now.backlog:.0f}")
        parts.append(f"late msgs ignored +{ignored}")
        self.prev, self.t = now or self.prev, t
        self.placed, self.asked, self.ignored = counts
        return " | ".join(parts)


def summary(city: City, seconds: float, e2e: list[float] | None = None) -> str:
    """The end-of-run report."""
    done = city.delivered
    svc = city.service
    mins = [(o.times["delivered"] - o.times["placed"]) / 60 for o in done]
    late = sum(1 for o in done if o.times["delivered"] > o.promised_at)
    offers, dispatch = svc.offers, svc.dispatch
    ignored = {k: v for k, v in svc.ignored.items() if v}
    lines = [
        f"ran {seconds:.0f} s real, until simulated {city.clock.label()}",
        f"orders placed {city.placed}, delivered {len(done)}, cancelled {len(city.cancelled)}, "
        f"still open {city.open_orders()}",
        f"delivery time (simulated) mean {sum(mins) / len(mins):.1f} min, late {late}"
        if mins else "no order delivered yet",
        "offers: " + ", ".join(f"{k} {offers[k]}" for k in
                               ("sent", "accepted", "rejected", "timed_out", "reassigned",
                                "escalated")),
        "dispatch requests: " + ", ".join(f"{k} {dispatch[k]}" for k in ("first", "more", "retry"))
        + "; replies: " + ", ".join(f"{k} {dispatch[k]}" for k in
                                    ("candidates", "empty", "failed")),
        "late, repeated or unknown messages ignored: "
        + (", ".join(f"{k} {ignored[k]}" for k in IGNORED_REASONS if k in ignored) or "none"),
        "received by parties: " + ", ".join(f"{k} {v}" for k, v in city.received.items()),
    ]
    if e2e:
        lines.append(f"{e2e_text(e2e)}, max {_ms(max(e2e))} over the run; "
                     f"{city.latency.waited_offline} more waited for an offline party")
    refused = {**svc.undelivered, **{f"app {k}": v for k, v in city.app_refusals.items()}}
    if refused:
        lines.append("not delivered (final receipts): "
                     + ", ".join(f"{k} {v}" for k, v in sorted(refused.items())))
    dups = city.gateway.duplicates + svc.inbox.duplicates
    lines.append(f"redelivered copies dropped by the SDK: {dups}"
                 + (f"; unreadable deliveries skipped by parties: {city.unreadable}"
                    if city.unreadable else ""))
    return "\n".join(lines)


def kept_text(city: City, path: Path) -> str:
    """Where the kept data is, with a history command for a delivered and a cancelled
    order."""
    examples = [f"`router history {done[-1].id} --data-dir {path}` ({what})"
                for done, what in ((city.delivered, "delivered"), (city.cancelled, "cancelled"))
                if done]
    return f"data kept in {path}" + ("; timelines: " + ", ".join(examples) if examples else "")


def run(cfg: Config, seconds: float | None, workers: int = 2, data_dir: str | None = None) -> int:
    """Run the demo until Ctrl-C/SIGTERM (or ``seconds``); print live lines and a summary.

    Raises DemoError (before anything runs) when the data directory cannot be used.
    """
    path, kept = open_data_dir(data_dir)
    demo = Demo(workers, path, kept)
    stop: list[int] = []
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    # the SDK's and the order service's warnings go to a file, not over the figures
    logging.basicConfig(filename=path / "city.log", level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    city = None
    t0 = time.monotonic()
    try:
        demo.start()
        # one name per run: a kept data dir remembers the message ids of earlier runs
        cfg = dataclasses.replace(cfg, first_order=first_order(path)) if kept else cfg
        city = City(demo.url, cfg, name=f"city-{int(time.time()) % 100000}",
                    auth=demo.trust.options)
        print(demo.banner(), flush=True)
        display, next_print = Display(city, demo.metrics_url), time.monotonic() + 1
        while not stop and (seconds is None or time.monotonic() - t0 < seconds):
            city.step()
            time.sleep(0.01)
            if time.monotonic() >= next_print:
                print(display.line(), flush=True)
                next_print += 1
                if kept:
                    save_next_order(path, city)
                if (why := demo.gone()) is not None:
                    print(f"router demo: stopping: {why}", file=sys.stderr, flush=True)
                    break
        print("\n" + summary(city, time.monotonic() - t0, display.e2e), flush=True)
        if kept:
            save_next_order(path, city)
            print(kept_text(city, path), flush=True)
        return 0 if demo.gone() is None else 1
    finally:
        if city is not None:
            city.close()
        demo.stop()
