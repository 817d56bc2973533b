"""The durability run's summaries (medians per figure), ratios and markdown report."""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

from benchmarks.durability.scenarios import SCENARIOS, TABLE_ORDER
from benchmarks.harness.machine import environment
from benchmarks.harness.report import (bullets, first_line, fmt, machine_line, medians_note,
                                       ratio_section, section, table_head)
from benchmarks.harness.stats import group_rows, lookup, median_of, runs_used

if TYPE_CHECKING:
    from benchmarks.durability.options import DurabilityOptions

#: The figures a summary holds (paths into a row), each the median over the runs used.
FIGURES = ("accepted_msg_s", "received_msg_s", "delivered_receipts_msg_s",
           "accept.p50_ms", "accept.p99_ms", "accept.p999_ms", "accept.max_ms",
           "deliver_receipt.p50_ms", "deliver_receipt.p99_ms",
           "deliver_latency.p50_ms", "deliver_latency.p99_ms", "deliver_latency.max_ms",
           "hop_cpu_us_per_msg", "journal_bytes", "accepted", "received", "count",
           "duplicates", "out_of_order", "offered_s", "msg_s",
           "hello_to_first_s", "hello_to_last_s", "hello_to_acked_s",
           "hello_to_delivered_receipts_s", "recovered_s", "startup.spawn_to_listen_s",
           "startup.spawn_to_serving_s", "startup.replay_s", "startup.records",
           "startup.pending", "startup.segments", "fill.accepted_msg_s",
           "fill.accept.p99_ms", "delivered_receipts", "journal_metrics.commits",
           "journal_metrics.mean_commit_ms", "journal_metrics.msgs_per_commit",
           "other_cpu_s", "kthread_cpu_s", "max_accept_gap_ms")

SCRAPE_COLUMNS = ("load", "scrapes", "failed", "p50 ms", "p99 ms", "max ms", "response bytes",
                  "group commits: mean ms / ACCEPTED per commit")


def one_line(row: dict) -> str:
    """A trial's figures on one line (printed as the run goes)."""
    if "error" in row:
        return "FAILED: " + first_line(row["error"], 300)
    parts = [f"commit {row.get('commit')}", *SCENARIOS[row["scenario"]].line(row)]
    if row.get("duplicates") or row.get("out_of_order"):
        parts.append(f"dup {row.get('duplicates')} reordered {row.get('out_of_order')}")
    if row.get("noisy"):
        parts.append(f"NOISY: other processes used {row['other_cpu_s']:.2f} s CPU in "
                     f"{row['window_s']:.1f} s")
    return ", ".join(parts)


def commits_seen(rows: list[dict]) -> str:
    """The router commits the trials ran on, in order ("+wip": uncommitted changes)."""
    seen = []
    for r in rows:
        c = (r.get("commit") or "?") + ("+wip" if r.get("uncommitted") else "")
        if c not in seen:
            seen.append(c)
    return ", ".join(seen)


def _scrape_summary(used: list[dict]) -> dict | None:
    """GET /metrics durations pooled over the runs used (None: nothing scraped)."""
    durs = sorted(d for r in used for d in (lookup(r, "scrapes.durations_s") or []))
    if not durs and not any(lookup(r, "scrapes") for r in used):
        return None
    n = len(durs)
    return {
        "n": n,
        "p50_ms": durs[n // 2] * 1e3 if n else None,
        "p99_ms": durs[min(n - 1, int(0.99 * n))] * 1e3 if n else None,
        "max_ms": durs[-1] * 1e3 if n else None,
        "failed": sum((lookup(r, "scrapes.during") or 0) - (lookup(r, "scrapes.ok") or 0)
                      for r in used),
        "bytes": median_of(used, "scrapes.bytes"),
    }


def summarize(rows: list[dict]) -> dict:
    """{(scenario, label, rate): {figure: median over quiet runs, runs, quiet, used}}."""
    out = {}
    groups = group_rows(rows, lambda r: (r["scenario"], r["label"], r.get("rate", 0.0)))
    for key, rs in groups.items():
        _ok, quiet, used = runs_used(rs)
        s = {"runs": len(rs), "failed": sum(1 for r in rs if "error" in r),
             "quiet": len(quiet), "used": len(used), "commits": commits_seen(rs),
             "errors": [r["error"] for r in rs if "error" in r]}
        for f in FIGURES:
            s[f] = median_of(used, f)
        codes: dict = {}
        for r in used:
            for k, v in (r.get("receipt_codes") or {}).items():
                codes[k] = codes.get(k, 0) + v
        s["receipt_codes"] = codes
        scrape = _scrape_summary(used)
        if scrape is not None:
            s["scrape"] = scrape
        s["per_run_msg_s"] = [r.get("msg_s") for r in rs if "error" not in r]
        out[key] = s
    return out


def summary_rate(summary: dict) -> float:
    """The fixed offered rate of the run's rate/scrape trials (0: none)."""
    return next((k[2] for k in summary if k[0] in ("rate", "scrape") and k[2]), 0.0)


def ratios(summary: dict, rows: list[dict]) -> dict:
    """Journal modes against each other, metrics on against off, scraped against not."""
    def g(sc, label, f, rate=0.0):
        return (summary.get((sc, label, rate)) or {}).get(f)

    def div(a, b):
        return a / b if a is not None and b else None

    out = {}
    for sc in ("throughput", "closed"):
        tag = "" if sc == "throughput" else " (closed loop)"
        for a, b in (("fsync", "nojournal"), ("nofsync", "nojournal"), ("fsync", "nofsync")):
            out[f"accepted msg/s {a}/{b}{tag}"] = div(g(sc, a, "accepted_msg_s"),
                                                      g(sc, b, "accepted_msg_s"))
            out[f"delivered msg/s {a}/{b}{tag}"] = div(g(sc, a, "received_msg_s"),
                                                       g(sc, b, "received_msg_s"))
    out["metrics on+scraped / off, NOTICE msg/s (medians)"] = div(
        g("metrics", "on", "msg_s"), g("metrics", "off", "msg_s"))
    # Per pair (same repeat): on/off.
    on = [r for r in rows if r["scenario"] == "metrics" and r["label"] == "on"]
    off = [r for r in rows if r["scenario"] == "metrics" and r["label"] == "off"]
    pairs = [x.get("msg_s") / y.get("msg_s") for x, y in zip(on, off)
             if "error" not in x and "error" not in y and y.get("msg_s")]
    if pairs:
        out["metrics on/off, median of per-pair ratios"] = statistics.median(pairs)
    out["durable accepted msg/s, metrics scraped / not (journal+fsync)"] = div(
        g("scrape", "fsync", "accepted_msg_s"), g("throughput", "fsync", "accepted_msg_s"))
    rate = summary_rate(summary)
    for p in ("p50", "p99"):
        out[f"to-ACCEPTED {p} at {rate:,.0f}/s, metrics scraped / not (journal+fsync)"] = div(
            g("scrape", "fsync", f"accept.{p}_ms", rate),
            g("rate", "fsync", f"accept.{p}_ms", rate))
    return {k: v for k, v in out.items() if v is not None}


def _header(rows: list[dict], opts: DurabilityOptions, env: dict, when: str | None
            ) -> list[str]:
    """Title, machine, router commits, how the figures were taken and the routers run."""
    routers = ("Routers run with `--history false --summary-interval 0` and a fresh "
               "`--data-dir`"
               + (f", plus `{opts.router_args}`" if opts.router_args else "")
               + (f", `--window {opts.router_window}`" if opts.router_window else "")
               + (f", `--commit-batch {opts.commit_batch}`" if opts.commit_batch else "") + ".")
    return [f"## Durability benchmark, {when or time.strftime('%Y-%m-%d %H:%M')}", "",
            f"{machine_line(env)} Journal on {env.get('fs', '?')}.",
            f"Router commits seen by the trials: {commits_seen(rows)} (a +wip suffix would "
            "mark uncommitted changes in router/ or ext/ at the time).",
            f"Payload {opts.payload} B, kind `{opts.kind}`, ORDER class to one address; "
            f"{medians_note(opts.repeat)} {routers}",
            ""]


def _scrape_table(summary: dict) -> list[str]:
    """GET /metrics durations of every figure that scraped."""
    scraped = [(k, s) for k, s in summary.items() if s.get("scrape")]
    if not scraped:
        return []
    lines = ["### GET /metrics duration on a busy router (scrapes that started while "
             "the load ran; the runs used above)", "", *table_head(*SCRAPE_COLUMNS)]
    for (sc, _label, rate), s in scraped:
        load = ("NOTICE, as fast as it goes" if sc == "metrics"
                else "ORDER, journal + fsync, "
                + (f"{rate:,.0f} msg/s" if rate else "as fast as it goes"))
        c = s["scrape"]
        lines.append(f"| {load} | {fmt(c['n'])} | {fmt(c['failed'])} | {fmt(c['p50_ms'], '.1f')}"
                     f" | {fmt(c['p99_ms'], '.1f')} | {fmt(c['max_ms'], '.1f')} | "
                     f"{fmt(c['bytes'])} | {fmt(s['journal_metrics.mean_commit_ms'], '.2f')} / "
                     f"{fmt(s['journal_metrics.msgs_per_commit'], '.0f')} |")
    return lines + [""]


def markdown(rows: list[dict], opts: DurabilityOptions, notes=(), env: dict | None = None,
             when: str | None = None) -> str:
    """The run's report: one table per scenario, scrape durations, failures, ratios."""
    env = env or environment()
    summary = summarize(rows)
    lines = _header(rows, opts, env, when) + bullets(notes)
    for name in TABLE_ORDER:
        lines += SCENARIOS[name].table(summary, opts)
    lines += _scrape_table(summary)
    fails = [f"{k[0]}/{k[1]}: {s['failed']} of {s['runs']} runs failed: "
             + first_line(s["errors"][0], 300) for k, s in summary.items() if s["failed"]]
    lines += section("Failed runs", fails)
    lines += ratio_section(ratios(summary, rows))
    return "\n".join(lines)
