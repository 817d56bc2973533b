"""The load trial that throughput, closed, rate and scrape share: one router, one
acking ENDPOINT on user:1, one ORDER sender with a window; per message the time to its
ACCEPTED and DELIVERED receipts. Also their common progress line and table."""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Callable

from benchmarks.durability.router import MODE_TITLES, MODES, disk_usage
from benchmarks.durability.scenarios.base import Scenario
from benchmarks.durability.scraper import Scraper, journal_metrics, scrape_stats
from benchmarks.durability.trial import (Trial, latency_ms, receipt_figures, receiver_cfg,
                                         sender_cfg)
from benchmarks.harness.machine import machine_cpu, noise_gauge
from benchmarks.harness.procs import TrialError, free_port
from benchmarks.harness.report import first_line, fmt, runs_cell, table_head
from benchmarks.harness.stats import read_array

if TYPE_CHECKING:
    from benchmarks.durability.options import DurabilityOptions

COLUMNS = ("mode", "offered/s", "accepted msg/s", "to-ACCEPTED p50 / p99 / p99.9 / max ms",
           "longest pause in ACCEPTED ms", "received msg/s", "DELIVERED receipts msg/s",
           "to-DELIVERED p50 / p99 ms", "delivered / sent", "refused", "router CPU us/msg",
           "journal MB", "runs used/quiet/all", "router commit")


def _figures(sres: dict, rres: dict, cpu_s: float, t_first: int) -> dict:
    """Delivery rates, counts, reasons and router CPU from the drivers' results."""
    span = max(1, rres["t_last_ns"] - t_first) / 1e9
    return dict(
        sent=sres["sent"], received=rres["received"],
        received_msg_s=rres["received"] / span if rres["received"] else 0.0,
        duplicates=rres.get("duplicates"), out_of_order=rres.get("out_of_order"),
        offered_s=sres["sent"] / max(1e-9, (sres["t_last_ns"] - t_first) / 1e9),
        receipts=sres.get("receipts"), receipt_codes=sres.get("receipt_codes"),
        errors=sres.get("errors"), sender_reason=sres["reason"],
        receiver_reason=rres["reason"], untracked_receipts=sres.get("untracked_receipts"),
        repeated_receipts=sres.get("repeated_receipts"),
        hop_cpu_s=cpu_s,
        hop_cpu_us_per_msg=cpu_s * 1e6 / rres["received"] if rres["received"] else None,
    )


def trial_load(scenario: str, mode: str, opts: DurabilityOptions, rate: float = 0.0) -> dict:
    """One load trial of ``scenario`` in journal ``mode`` (at ``rate``, 0: saturation)."""
    scrape = scenario == "scrape"
    t = Trial(scenario, mode, opts)
    row = t.row
    window_on = "delivered" if scenario == "closed" else "accepted"
    row.update(mode=mode, rate=rate, window=opts.window, window_on=window_on)
    scraper = None
    try:
        mport = free_port() if scrape else 0
        r = t.router(mode, metrics_port=mport)
        r.start()
        count = max(1, int(rate * opts.duration)) if rate else opts.count
        row["count"] = count
        lat_file = t.path("lat.bin")
        recv = t.driver("receiver", receiver_cfg(opts, r.endpoint, count,
                                                 lat_file=lat_file), "receiver")
        recv.wait("ready", 60)
        snd = t.driver("sender", sender_cfg(opts, r.endpoint, t.tmp, count=count,
                                            rate=rate, window_on=window_on), "sender")
        snd.wait("ready", 60)
        if scrape:
            scraper = Scraper(mport, opts.scrape_interval)
            scraper.start()
        busy0 = machine_cpu()
        cpu0 = r.cpu_s()
        go_ns = time.monotonic_ns()
        recv.go()
        snd.go()
        wait_s = opts.deadline + (opts.duration if rate else 0) + 30
        sres = snd.wait("result", wait_s)
        rres = recv.wait("result", wait_s)
        end_ns = time.monotonic_ns()
        cpu1 = r.cpu_s()
        r.check_alive()
        row.update(noise_gauge(busy0, (cpu1 - cpu0) + sres["cpu_s"] + rres["cpu_s"]))
        row.update(receipt_figures(t.path("sender"), sres["t_first_ns"]))
        row.update(_figures(sres, rres, cpu1 - cpu0, sres["t_first_ns"]),
                   journal_bytes=disk_usage(t.data))
        row["deliver_latency"] = latency_ms(read_array(lat_file, "q"))
        if scraper:
            scraper.stop()
            row["scrapes"] = scrape_stats(scraper, go_ns, end_ns)
            row["journal_metrics"] = journal_metrics(mport)
    except TrialError as exc:
        row["error"] = str(exc)
    finally:
        if scraper and scraper.is_alive():
            scraper.stop()
        t.close()
    return row


def load_line(row: dict) -> list[str]:
    """Accepted and received rates, time to ACCEPTED, pauses, receipts, scrapes."""
    a = row.get("accept") or {}
    parts = [f"accepted {row['accepted']:,} at {row['accepted_msg_s']:,.0f}/s",
             f"to-ACCEPTED p50 {a.get('p50_ms', 0):.2f} p99 {a.get('p99_ms', 0):.2f} ms",
             "longest ACCEPTED pause " + ", ".join(
                 f"{g['ms']:.1f} ms after {g['after_accepted']:,}"
                 for g in (row.get("accept_gaps") or [])[:2]),
             f"received {row['received']:,} at {row['received_msg_s']:,.0f}/s",
             f"DELIVERED receipts {row['delivered_receipts']:,}"]
    if row.get("receipt_codes"):
        parts.append(f"codes {row['receipt_codes']}")
    if row.get("scrapes"):
        d = row["scrapes"]["durations_s"]
        if d:
            parts.append(f"scrapes {len(d)} p50 {statistics.median(d) * 1e3:.1f} ms "
                         f"max {d[-1] * 1e3:.1f} ms")
    return parts


def _table_row(key: tuple, s: dict) -> str:
    """One mode (and rate) of a load table."""
    if s["failed"] == s["runs"]:
        return (f"| {MODE_TITLES[key[1]]} | FAILED: "
                f"{first_line(s['errors'][0], 200)} ||||||||||||| ")
    codes = ", ".join(f"{k} {v}" for k, v in s["receipt_codes"].items()) or "0"
    return (
        f"| {MODE_TITLES[key[1]]} | {fmt(key[2] or None)} | {fmt(s['accepted_msg_s'])} | "
        f"{fmt(s['accept.p50_ms'], '.2f')} / {fmt(s['accept.p99_ms'], '.2f')} / "
        f"{fmt(s['accept.p999_ms'], '.2f')} / {fmt(s['accept.max_ms'], '.2f')} | "
        f"{fmt(s['max_accept_gap_ms'], '.1f')} | {fmt(s['received_msg_s'])} | "
        f"{fmt(s['delivered_receipts_msg_s'])} | "
        f"{fmt(s['deliver_receipt.p50_ms'], '.2f')} / "
        f"{fmt(s['deliver_receipt.p99_ms'], '.2f')} | "
        f"{fmt(s['delivered_receipts'])} / {fmt(s['count'])} | {codes} | "
        f"{fmt(s['hop_cpu_us_per_msg'], '.2f')} | "
        f"{fmt((s['journal_bytes'] or 0) / 1e6, '.1f')} | "
        f"{runs_cell(s)} | {s['commits']} |")


def load_table(name: str, title: str, summary: dict) -> list[str]:
    """The table of a load scenario, modes in MODES order."""
    keys = [k for k in summary if k[0] == name]
    if not keys:
        return []
    lines = [f"### {title}", "", *table_head(*COLUMNS)]
    lines += [_table_row(k, summary[k])
              for k in sorted(keys, key=lambda k: list(MODES).index(k[1]))]
    return lines + [""]


def load_scenario(name: str, trials: Callable[[DurabilityOptions, int], list],
                  title: Callable[[DurabilityOptions], str]) -> Scenario:
    """A scenario made of load trials, titled ``title(opts)`` in the report."""
    return Scenario(
        name=name,
        trials=trials,
        run=lambda label, rate, opts: trial_load(name, label, opts, rate),
        line=load_line,
        table=lambda summary, opts: load_table(name, title(opts), summary),
    )
