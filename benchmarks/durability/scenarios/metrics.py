"""metrics: best-effort NOTICE throughput (--metrics-count messages, one address) with
--metrics-port on and a scraper GETting /metrics every --scrape-interval, against metrics
off; trials alternate (off,on / on,off ...) so that drift cancels out."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from benchmarks.durability.scenarios.base import Scenario
from benchmarks.durability.scraper import Scraper, scrape_stats
from benchmarks.durability.trial import Trial, latency_ms, receiver_cfg, sender_cfg
from benchmarks.harness.machine import machine_cpu, noise_gauge
from benchmarks.harness.procs import TrialError, free_port
from benchmarks.harness.report import fmt, runs_cell, table_head
from benchmarks.harness.stats import read_array
from benchmarks.proto import protocol as P

if TYPE_CHECKING:
    from benchmarks.durability.options import DurabilityOptions

COLUMNS = ("metrics", "delivered msg/s (median)", "per run", "delivered / sent",
           "router CPU us/msg", "scrapes during load", "GET p50 / p99 / max ms",
           "runs used/quiet/all", "router commit")


def _figures(sres: dict, rres: dict, cpu_s: float, lat_file: str) -> dict:
    """Delivered msg/s, counts and router CPU from the drivers' results."""
    span = max(1, rres["t_last_ns"] - sres["t_first_ns"]) / 1e9
    got = rres["received"]
    return dict(
        sent=sres["sent"], received=got,
        msg_s=got / span if got else 0.0,
        duplicates=rres.get("duplicates"), out_of_order=rres.get("out_of_order"),
        errors=sres.get("errors"), hop_cpu_s=cpu_s,
        hop_cpu_us_per_msg=cpu_s * 1e6 / got if got else None,
        deliver_latency=latency_ms(read_array(lat_file, "q")),
    )


def trial_metrics(metrics_on: bool, opts: DurabilityOptions) -> dict:
    """NOTICE throughput to one address, metrics endpoint on (and scraped) or off."""
    label = "on" if metrics_on else "off"
    t = Trial("metrics", label, opts)
    row = t.row
    row.update(metrics=label, count=opts.metrics_count)
    scraper = None
    try:
        mport = free_port() if metrics_on else 0
        r = t.router("fsync", metrics_port=mport)
        r.start()
        n = opts.metrics_count
        lat_file = t.path("lat.bin")
        recv = t.driver("receiver", receiver_cfg(
            opts, r.endpoint, n, reliable=False, lat_file=lat_file), "receiver")
        recv.wait("ready", 60)
        # The sender stays connected until the receiver is done (hold), so the router's
        # handling of a departed sender (RESULTS.md, observation 1) is not measured here.
        snd = t.driver("sender", sender_cfg(
            opts, r.endpoint, t.tmp, count=n, msg_class=int(P.MsgClass.NOTICE), kind="",
            hold=True, wait_close=True), "sender")
        snd.wait("ready", 60)
        if metrics_on:
            scraper = Scraper(mport, opts.scrape_interval)
            scraper.start()
            time.sleep(min(0.3, opts.scrape_interval * 2))  # scraping before the load too
        busy0 = machine_cpu()
        cpu0 = r.cpu_s()
        go_ns = time.monotonic_ns()
        recv.go()
        snd.go()
        snd.wait("sent", opts.deadline + 30)
        rres = recv.wait("result", opts.deadline + 30)
        end_ns = time.monotonic_ns()
        cpu1 = r.cpu_s()
        snd.send("close")
        sres = snd.wait("result", 30)
        r.check_alive()
        row.update(noise_gauge(busy0, (cpu1 - cpu0) + sres["cpu_s"] + rres["cpu_s"]))
        row.update(_figures(sres, rres, cpu1 - cpu0, lat_file))
        if scraper:
            scraper.stop()
            row["scrapes"] = scrape_stats(scraper, go_ns, end_ns)
    except TrialError as exc:
        row["error"] = str(exc)
    finally:
        if scraper and scraper.is_alive():
            scraper.stop()
        t.close()
    return row


def line(row: dict) -> list[str]:
    """Delivered msg/s and the longest scrape."""
    parts = [f"{row['msg_s']:,.0f} msg/s", f"{row['received']:,}/{row['count']:,}"]
    if row.get("scrapes"):
        d = row["scrapes"]["durations_s"]
        if d:
            parts.append(f"scrapes {len(d)} max {d[-1] * 1e3:.1f} ms")
    return parts


def _table_row(label: str, s: dict) -> str:
    """"off" or "on" in the metrics-cost table."""
    sc = s.get("scrape") or {}
    return (
        f"| {label} | {fmt(s['msg_s'])} | "
        f"{', '.join(fmt(v) for v in s['per_run_msg_s'])} | {fmt(s['received'])} / "
        f"{fmt(s['count'])} | {fmt(s['hop_cpu_us_per_msg'], '.2f')} | "
        f"{fmt(sc.get('n'))} | {fmt(sc.get('p50_ms'), '.1f')} / "
        f"{fmt(sc.get('p99_ms'), '.1f')} / {fmt(sc.get('max_ms'), '.1f')} | "
        f"{runs_cell(s)} | {s['commits']} |")


def table(summary: dict, opts: DurabilityOptions) -> list[str]:
    """The metrics-cost table: off, then on."""
    keys = sorted((k for k in summary if k[0] == "metrics"), key=lambda k: k[1] != "off")
    if not keys:
        return []
    lines = [f"### Metrics cost: NOTICE, one address, {opts.metrics_count:,} messages, "
             f"scraped every {opts.scrape_interval * 1000:.0f} ms", "", *table_head(*COLUMNS)]
    return lines + [_table_row(k[1], summary[k]) for k in keys] + [""]


def trials(opts: DurabilityOptions, i: int) -> list[tuple[str, float]]:
    """Off and on, in the other order every second repeat (ABBA)."""
    pair = [("off", 0.0), ("on", 0.0)]
    return pair if i % 2 == 0 else pair[::-1]


SCENARIO = Scenario(
    name="metrics",
    trials=trials,
    run=lambda label, rate, opts: trial_metrics(label == "on", opts),
    line=line,
    table=table,
)
