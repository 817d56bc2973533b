"""The hop run's summaries (medians per figure), ratios and markdown report."""

from __future__ import annotations

import time

from benchmarks.harness.machine import environment
from benchmarks.harness.report import (bullets, first_line, fmt, machine_line, medians_note,
                                       ratio_section, runs_cell, section, table_head)
from benchmarks.harness.stats import group_rows, median_of, runs_used
from benchmarks.hop.options import HopOptions
from benchmarks.hop.scenarios import SCENARIOS

#: The figures a summary holds, each the median over the runs used.
FIGURES = ("msg_s", "acked_msg_s", "hop_cpu_us_per_msg", "p50_us", "p99_us", "p999_us",
           "max_us", "lost", "delivered", "expected", "offered_s", "duplicates",
           "out_of_order", "other_cpu_s")

COLUMNS = ("contender", "offered/s", "delivered msg/s", "acked msg/s", "delivered/expected",
           "dup/reordered", "p50 us", "p99 us", "p99.9 us", "max us", "hop CPU us/msg",
           "runs used/quiet/all")


def one_line(row: dict) -> str:
    """A trial's figures on one line (printed as the run goes)."""
    if "error" in row:
        return "FAILED: " + first_line(row["error"], 300)
    parts = [f"{row['msg_s']:,.0f} msg/s", f"{row['delivered']:,}/{row['expected']:,}"]
    if row.get("duplicates") or row.get("out_of_order"):
        parts.append(f"dup {row['duplicates']} reordered {row['out_of_order']}")
    if row.get("hop_cpu_us_per_msg"):
        parts.append(f"hop {row['hop_cpu_us_per_msg']:.2f} us CPU/msg")
        if row.get("hop_cpu_split_s") and row.get("delivered"):
            parts.append("(" + ", ".join(f"{k} {v * 1e6 / row['delivered']:.2f}"
                                         for k, v in row["hop_cpu_split_s"].items()) + ")")
    if "p99_us" in row:
        parts.append(f"p50 {row['p50_us']:.0f} us p99 {row['p99_us']:.0f} us")
    if "acked_msg_s" in row:
        parts.append(f"acked {row['acked_msg_s']:,.0f} msg/s")
    if row.get("noisy"):
        parts.append(f"NOISY: other processes used {row['other_cpu_s']:.2f} s CPU "
                     f"in {row['window_s']:.1f} s")
    if row.get("receipts"):
        parts.append(f"receipts {row['receipts']}")
    if row.get("errors"):
        parts.append(f"errors {row['errors']}")
    return ", ".join(parts)


def summarize(rows: list[dict], quiet_only: bool = True) -> dict:
    """{(scenario, contender, rate): median figures over repeats}.

    With ``quiet_only``, trials marked noisy are left out of a figure's median as long as
    at least one quiet trial of that figure exists.
    """
    out = {}
    groups = group_rows(rows, lambda r: (r["scenario"], r["contender"], r["rate"]))
    for key, rs in groups.items():
        ok, quiet, used = runs_used(rs, quiet_only)
        out[key] = {
            "runs": len(rs),
            "failed": len(rs) - len(ok),
            "used": len(used),
            "quiet": len(quiet),
            "errors": [r["error"] for r in rs if "error" in r],
            **{k: median_of(used, k) for k in FIGURES},
        }
    return out


#: The fixed ratios of a run: name, then numerator and denominator as (scenario,
#: contender, figure). A figure missing from the run leaves its ratio out.
T, MSG, ACKED, CPU = "throughput", "msg_s", "acked_msg_s", "hop_cpu_us_per_msg"
RATIOS: tuple[tuple[str, tuple[str, str, str], tuple[str, str, str]], ...] = (
    ("router/proxy throughput", (T, "router", MSG), (T, "proxy", MSG)),
    ("router/pyloop throughput", (T, "router", MSG), (T, "pyloop", MSG)),
    ("pyloop/proxy throughput", (T, "pyloop", MSG), (T, "proxy", MSG)),
    ("router 10k addresses/single", ("gateways", "router", MSG), (T, "router", MSG)),
    ("pyloop 10k addresses/single", ("gateways", "pyloop", MSG), (T, "pyloop", MSG)),
    ("router reliable (acked)/proxy", ("reliable", "router", ACKED), (T, "proxy", MSG)),
    ("router reliable (delivered)/proxy", ("reliable", "router", MSG), (T, "proxy", MSG)),
    ("router/proxy hop CPU per msg", (T, "router", CPU), (T, "proxy", CPU)),
    # the replicated store (issue 14): Redis primary + replica against the file journal
    ("router-redis / router (reliable msg/s)",
     ("reliable", "router-redis", MSG), ("reliable", "router", MSG)),
    ("router-redis / router (reliable acked msg/s)",
     ("reliable", "router-redis", ACKED), ("reliable", "router", ACKED)),
    ("router-redis / router reliable hop CPU per msg (router + both redis-servers)",
     ("reliable", "router-redis", CPU), ("reliable", "router", CPU)),
    # trust (issue 12): permissions cost, then encryption's
    ("router-plain/router throughput (permissions on)",
     (T, "router-plain", MSG), (T, "router", MSG)),
    ("router-curve/router-plain throughput (CURVE)",
     (T, "router-curve", MSG), (T, "router-plain", MSG)),
    ("proxy-curve/proxy throughput (libzmq's CURVE alone)",
     (T, "proxy-curve", MSG), (T, "proxy", MSG)),
    ("router-plain/router hop CPU per msg", (T, "router-plain", CPU), (T, "router", CPU)),
    ("router-curve/router-plain hop CPU per msg",
     (T, "router-curve", CPU), (T, "router-plain", CPU)),
    ("proxy-curve/proxy hop CPU per msg", (T, "proxy-curve", CPU), (T, "proxy", CPU)),
)


def ratios(summary: dict) -> dict:
    """Every ratio the issue asks for, from figures of this run only."""
    def get(sc, c, key="msg_s", rate=0.0):
        v = summary.get((sc, c, rate), {}).get(key)
        return v if v else None

    def div(a, b):
        return a / b if a is not None and b else None

    out = {name: div(get(*num), get(*den)) for name, num, den in RATIOS}
    for (sc, c, rate) in summary:
        if sc == "latency" and c == "router":
            out[f"router/proxy p99 @ {rate:,.0f}/s"] = div(
                get(sc, "router", "p99_us", rate), get(sc, "proxy", "p99_us", rate))
            out[f"router/pyloop p99 @ {rate:,.0f}/s"] = div(
                get(sc, "router", "p99_us", rate), get(sc, "pyloop", "p99_us", rate))
            out[f"router-redis/router p99 @ {rate:,.0f}/s"] = div(
                get(sc, "router-redis", "p99_us", rate), get(sc, "router", "p99_us", rate))
        if sc == "fanout" and c == "router":
            out[f"router/pyloop fan-out p99 @ {rate:,.0f}/s"] = div(
                get(sc, "router", "p99_us", rate), get(sc, "pyloop", "p99_us", rate))
    return {k: v for k, v in out.items() if v is not None}


def _header(opts: HopOptions, notes: list[str], env: dict, when: str | None) -> list[str]:
    """Title, machine, router build, how the figures were taken, notes."""
    router = (f"Router: commit {env.get('commit') or '?'}"
              + (f" with uncommitted changes in {env['uncommitted']}"
                 if env.get("uncommitted") else "")
              + (f"; router/core built {env['router_core_built']}"
                 if env.get("router_core_built") else "") + ".")
    sender = ("stays connected until the receivers are done." if opts.sender_hold
              else "disconnects after its last send.")
    lines = [f"## Hop benchmark, {when or time.strftime('%Y-%m-%d %H:%M')}", "",
             machine_line(env), router,
             f"Payload {opts.payload} B; {medians_note(opts.repeat)} Sender {sender}", ""]
    return lines + bullets(notes)


def _row(c: str, rate: float, s: dict) -> str:
    """One contender's line in a scenario's table."""
    if s["failed"] == s["runs"]:
        err = first_line(s["errors"][0], 200) if s["errors"] else "failed"
        return f"| {c} | {fmt(rate or None)} | FAILED: {err} |||||||||"
    return (f"| {c} | {fmt(rate or None)} | {fmt(s['msg_s'])} | "
            f"{fmt(s['acked_msg_s'])} | {fmt(s['delivered'])}/{fmt(s['expected'])} | "
            f"{fmt(s['duplicates'])}/{fmt(s['out_of_order'])} | {fmt(s['p50_us'])} | "
            f"{fmt(s['p99_us'])} | {fmt(s['p999_us'])} | "
            f"{fmt(s['max_us'])} | {fmt(s['hop_cpu_us_per_msg'], '.2f')} | {runs_cell(s)} |")


def markdown(rows: list[dict], opts: HopOptions, notes: list[str] = (),
             env: dict | None = None, when: str | None = None) -> str:
    """The run's report: one table per scenario, failures, ratios."""
    env = env or environment()
    summary = summarize(rows)
    lines = _header(opts, list(notes), env, when)
    by_scenario: dict = {}
    for (sc, c, rate), s in summary.items():
        by_scenario.setdefault(sc, []).append((c, rate, s))
    for name, scenario in SCENARIOS.items():
        if name in by_scenario:
            lines += [f"### {scenario.title(opts)}", "", *table_head(*COLUMNS)]
            lines += [_row(c, rate, s) for c, rate, s in by_scenario[name]]
            lines.append("")
    failures = [f"{sc}/{c}" + (f" @ {rate:,.0f}/s" if rate else "")
                + f": {s['failed']} of {s['runs']} runs failed: "
                + first_line(s["errors"][0], 300)
                for (sc, c, rate), s in summary.items() if s["failed"]]
    lines += section("Failed runs (figures above are medians of the other runs)", failures)
    lines += ratio_section(ratios(summary))
    return "\n".join(lines)
