"""The users' benchmark's summaries (medians and spread over the rounds), ratios and
markdown report."""

from __future__ import annotations

import time

from benchmarks.harness.report import (bullets, first_line, fmt, ratio_section, section,
                                       table_head)
from benchmarks.harness.stats import group_rows, lookup, median_of, runs_used
from benchmarks.sdk.options import SdkOptions
from benchmarks.sdk.servers import CONTENDERS

FIGURES = ("msg_s", "confirmed_msg_s", "sender_cpu_us", "receiver_cpu_us",
           "server_cpu_us", "p50_us", "p99_us", "p999_us", "max_us", "sent", "delivered",
           "lost", "offered_s", "other_cpu_s")


def one_line(row: dict) -> str:
    """A trial's figures on one line (printed as the run goes)."""
    if "error" in row:
        return "FAILED: " + first_line(row["error"], 300)
    parts = [f"{row['msg_s']:,.0f} msg/s", f"{row['delivered']:,}/{row['sent']:,}",
             f"CPU send {fmt(row['sender_cpu_us'], '.1f')} recv "
             f"{fmt(row['receiver_cpu_us'], '.1f')} us/msg"]
    if row.get("confirmed_msg_s"):
        parts.append(f"confirmed {row['confirmed_msg_s']:,.0f}/s")
    if "p50_us" in row:
        parts.append(f"p50 {row['p50_us']:,.0f} p99 {row['p99_us']:,.0f} "
                     f"p99.9 {row['p999_us']:,.0f} us")
    if row.get("noisy"):
        parts.append(f"NOISY: other processes used {row['other_cpu_s']:.2f} s CPU in "
                     f"{row['window_s']:.1f} s")
    return ", ".join(parts)


def summarize(rows: list[dict], quiet_only: bool = True) -> dict:
    """{(contender, rate): medians over the rounds, and min/max of msg/s and p99}."""
    out = {}
    for key, rs in group_rows(rows, lambda r: (r["contender"], r["rate"])).items():
        ok, quiet, used = runs_used(rs, quiet_only)
        s = {"runs": len(rs), "failed": len(rs) - len(ok), "used": len(used),
             "quiet": len(quiet), "errors": [r["error"] for r in rs if "error" in r],
             **{k: median_of(used, k) for k in FIGURES}}
        for k in ("msg_s", "p99_us", "confirmed_msg_s"):  # spread: every completed round
            vals = [v for v in (lookup(r, k) for r in ok) if v is not None]
            s[f"{k}_range"] = (min(vals), max(vals)) if vals else None
        out[key] = s
    return out


def ratios(summary: dict, rates) -> dict:
    def get(c, key="msg_s", rate=0.0):
        v = summary.get((c, rate), {}).get(key)
        return v or None

    def div(a, b):
        return a / b if a is not None and b else None

    out = {
        "SDK best effort / nats core (delivered msg/s)": div(get("sdk"), get("nats")),
        "SDK best effort / redis (delivered msg/s)": div(get("sdk"), get("redis")),
        "SDK reliable / JetStream (delivered msg/s)": div(get("sdk-reliable"),
                                                          get("jetstream")),
        "SDK reliable DELIVERED receipts/s / JetStream PubAcks/s": div(
            get("sdk-reliable", "confirmed_msg_s"), get("jetstream", "confirmed_msg_s")),
        "asyncio / blocking (delivered msg/s)": div(get("sdk-asyncio"), get("sdk")),
        "sdk-curve / sdk, CURVE / open router (delivered msg/s)": div(get("sdk-curve"),
                                                                      get("sdk")),
        "asyncio / blocking sender CPU per msg": div(get("sdk-asyncio", "sender_cpu_us"),
                                                     get("sdk", "sender_cpu_us")),
        "asyncio / blocking receiver CPU per msg": div(get("sdk-asyncio", "receiver_cpu_us"),
                                                       get("sdk", "receiver_cpu_us")),
        "SDK / nats sender CPU per msg": div(get("sdk", "sender_cpu_us"),
                                             get("nats", "sender_cpu_us")),
        "SDK / nats receiver CPU per msg": div(get("sdk", "receiver_cpu_us"),
                                               get("nats", "receiver_cpu_us")),
    }
    for rate in rates:
        out[f"SDK / nats core p50 @ {rate:,}/s"] = div(get("sdk", "p50_us", rate),
                                                       get("nats", "p50_us", rate))
        out[f"SDK / nats core p99 @ {rate:,}/s"] = div(get("sdk", "p99_us", rate),
                                                       get("nats", "p99_us", rate))
        out[f"SDK / redis p99 @ {rate:,}/s"] = div(get("sdk", "p99_us", rate),
                                                   get("redis", "p99_us", rate))
    return {k: v for k, v in out.items() if v is not None}


def _range(r, spec=",.0f") -> str:
    return "-" if not r else f"{format(r[0], spec)}-{format(r[1], spec)}"


def _runs(s: dict) -> str:
    return f"{s['used']}/{s['quiet']}/{s['runs']}"


def markdown(rows: list[dict], opts: SdkOptions, env: dict, notes=(), when=None) -> str:
    summary = summarize(rows)
    lines = [f"## Users' benchmark, {when or time.strftime('%Y-%m-%d %H:%M')}", "",
             f"Machine: {env['cpu']}, {env['cores']} cores (`nproc` {env['nproc']}), Linux "
             f"{env['kernel']}. Python {env['python']}, pyzmq {env['pyzmq']} (libzmq "
             f"{env['libzmq']}), nats-server {env['nats-server']}, redis-server "
             f"{env['redis-server']}, nats-py {env['nats-py']}, redis-py {env['redis']} "
             f"(hiredis {env['hiredis']}). Router commit {env.get('commit') or '?'}"
             + (f" with uncommitted changes in {env['uncommitted']}"
                if env.get("uncommitted") else "") + ".",
             "",
             f"One Python publisher process -> one Python receiver process over tcp "
             f"loopback, {opts.payload} B payloads, each system through its own Python "
             f"client; a fresh server per trial. {opts.repeat} interleaved rounds (every "
             f"contender once per round, in turn); medians over the quiet rounds (all "
             f"rounds when none was quiet), and the spread (lowest-highest) over all rounds. Latency = receive time - send "
             f"time carried in the payload (CLOCK_MONOTONIC); CPU = the process's "
             f"user+system time over the measured phase (libzmq's I/O thread included).",
             ""]
    ok = [r for r in rows if "error" not in r]
    noisy = [r for r in ok if r.get("noisy")]
    if ok:
        other = sorted(r.get("other_cpu_s", 0) / max(r.get("window_s", 1), 1e-9) for r in ok)
        notes = [*notes, f"noise: {len(noisy)} of {len(ok)} trials NOISY (other processes "
                 f"used more than 10% of the machine's CPU while they ran); CPU used by "
                 f"others, median {other[len(other) // 2]:.2f} cores, highest "
                 f"{other[-1]:.2f} (kernel threads working for the trial count as others)"]
    lines += bullets(notes)
    lines += [f"### Throughput, {opts.count:,} messages as fast as the publisher goes", "",
              *table_head("contender", "delivered msg/s", "spread", "confirmed/s",
                          "MB/s", "delivered/sent", "sender CPU us/msg",
                          "receiver CPU us/msg", "server CPU us/msg", "runs used/quiet/all")]
    for c in opts.contenders:
        s = summary.get((c, 0.0))
        if not s:
            continue
        if s["failed"] == s["runs"]:
            lines.append(f"| {c} | FAILED: {first_line(s['errors'][0], 200)} ||||||||")
            continue
        mb = s["msg_s"] * opts.payload / 1e6 if s["msg_s"] else None
        lines.append(f"| {c} | {fmt(s['msg_s'])} | {_range(s['msg_s_range'])} | "
                     f"{fmt(s['confirmed_msg_s'])} | {fmt(mb, '.1f')} | "
                     f"{fmt(s['delivered'])}/{fmt(s['sent'])} | "
                     f"{fmt(s['sender_cpu_us'], '.1f')} | {fmt(s['receiver_cpu_us'], '.1f')} | "
                     f"{fmt(s['server_cpu_us'], '.1f')} | {_runs(s)} |")
    lines.append("")
    if opts.rates:
        lines += [f"### Latency at fixed offered rates, {opts.duration:g} s each", "",
                  *table_head("contender", "offered/s", "delivered/sent", "p50 us",
                              "p99 us", "p99 spread", "p99.9 us", "max us",
                              "sender CPU us/msg", "receiver CPU us/msg",
                              "runs used/quiet/all")]
        for rate in opts.rates:
            for c in opts.contenders:
                s = summary.get((c, float(rate)))
                if not s:
                    continue
                if s["failed"] == s["runs"]:
                    lines.append(f"| {c} | {rate:,} | FAILED: "
                                 f"{first_line(s['errors'][0], 200)} ||||||||")
                    continue
                lines.append(f"| {c} | {rate:,} | {fmt(s['delivered'])}/{fmt(s['sent'])} | "
                             f"{fmt(s['p50_us'])} | {fmt(s['p99_us'])} | "
                             f"{_range(s['p99_us_range'])} | {fmt(s['p999_us'])} | "
                             f"{fmt(s['max_us'])} | {fmt(s['sender_cpu_us'], '.1f')} | "
                             f"{fmt(s['receiver_cpu_us'], '.1f')} | {_runs(s)} |")
        lines.append("")
    lines += ["Contenders: " + "; ".join(f"`{c}` {CONTENDERS[c][1]}" for c in opts.contenders)
              + ".", ""]
    failures = [f"{c}" + (f" @ {rate:,.0f}/s" if rate else "") + f": {s['failed']} of "
                f"{s['runs']} runs failed: {first_line(s['errors'][0], 300)}"
                for (c, rate), s in summary.items() if s["failed"]]
    lines += section("Failed runs (figures above are medians of the other runs)", failures)
    lines += ratio_section(ratios(summary, opts.rates))
    return "\n".join(lines)
