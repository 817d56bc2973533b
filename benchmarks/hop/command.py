"""Hop benchmarks for the core message path: our router against a bare proxy and a
pure-Python loop, all driven by the same native sender and receiver processes.

    python -m benchmarks hop                          # every scenario, every contender
    python -m benchmarks hop -s throughput -n 200000  # one scenario, fewer messages
    python -m benchmarks hop -c proxy,pyloop --markdown benchmarks/RESULTS.md

Contenders (each its own process; sender and receivers are separate processes too):
  proxy   zmq.proxy(ROUTER frontend, DEALER backend)                 benchmarks/hop/proxy.py
  pyloop  a tuned pure-Python ROUTER loop speaking our protocol      benchmarks/hop/pyloop.py
  router  ``python -m router serve --bind tcp://127.0.0.1:PORT``     (skipped until
          ``import router.core`` works; ``--router-cmd`` changes the command line)
  router-redis  the same with ``--store redis://...``: its journal in a Redis primary
          with one replica, both started per trial (skipped without redis-server:
          ``sudo apt-get install redis-server``); reliable and latency only

Scenarios (benchmarks/hop/scenarios/, one module each):
  throughput  best effort (NOTICE), one address, as fast as it goes
  gateways    10,000 addresses bound through 4 GATEWAY connections, the sender cycles
              over them in a fixed random order;
              the connections live in one receiver process (--gateway-procs 1, the
              default) so the trial has the same driver processes as "throughput" and
              the ratio measures the hop; --gateway-procs 4 gives each its own process
  reliable    ORDER class, receiver acks cumulatively, sender waits for DELIVERED receipts
              (router, router-redis: the file journal against the Redis store)
  latency     p50/p99 at fixed offered rates (--rates), --duration seconds each
  fanout      SEND to channel order:1 with 3 members on 3 receivers, p99 at 5k msg/s

Ratios are computed only between figures measured in this run. Throughput is messages
delivered per second between the sender's first send and the last receiver's last
message (CLOCK_MONOTONIC, shared by all processes on the machine).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import time
from typing import Callable

from benchmarks.drivers.build import ensure_built
from benchmarks.harness.machine import environment, router_available
from benchmarks.harness.options import options_from_saved, parse_options, saved_options
from benchmarks.harness.procs import stop_all, stop_all_on_exit
from benchmarks.harness.report import append_markdown, change_notes, load_run, save_run
from benchmarks.hop.contenders import ROUTERS
from benchmarks.hop.options import HopOptions
from benchmarks.hop.redis_pair import INSTALL_HINT, redis_server
from benchmarks.hop.report import markdown, one_line
from benchmarks.hop.scenarios import SCENARIOS
from benchmarks.hop.trial import run_trial


def plan(scenarios, contenders, opts: HopOptions) -> list[tuple[str, str, float]]:
    """(scenario, contender, rate) in run order; contenders interleaved per repeat."""
    out = []
    for _ in range(opts.repeat):
        for sc in scenarios:
            for rate in SCENARIOS[sc].rates(opts):
                out += [(sc, c, rate) for c in contenders if c in SCENARIOS[sc].contenders]
    return out


def run(scenarios, contenders, opts: HopOptions, log: Callable[[str], None] = print
        ) -> list[dict]:
    """Every trial of the plan, one row each (a failed trial's row has ``error``)."""
    ensure_built()
    rows = []
    for sc, c, rate in plan(scenarios, contenders, opts):
        label = f"{sc:<10} {c:<7}" + (f" @ {rate:,.0f}/s" if rate else "")
        if opts.verbose:
            log(f"... {label}")
        row = run_trial(c, sc, opts, rate)
        if opts.verbose:
            log("    " + one_line(row))
        rows.append(row)
    return rows


def complete(opts: HopOptions) -> tuple[HopOptions, list[str]]:
    """The scenarios and contenders to run, with what a run needs added or dropped, and
    a note for each change."""
    scenarios, contenders, notes = list(opts.scenarios), list(opts.contenders), []

    def skip(names: list[str], why: str) -> None:
        for c in names:
            contenders.remove(c)
        notes.append(f"{', '.join(names)} skipped: {why}")
        print(f"{', '.join(names)} skipped: {why}", file=sys.stderr)

    routers = [c for c in contenders if c in ROUTERS]
    if routers and not opts.skip_router_check:
        ok, why = router_available()
        if not ok:
            skip(routers, f"`import router.core` failed ({why})")
    if "router-redis" in contenders:
        if redis_server() is None:
            skip(["router-redis"], INSTALL_HINT)
        elif importlib.util.find_spec("redis") is None:
            skip(["router-redis"], "redis-py is missing (a router dependency): pip install -e .")
    # router-redis is read against the router on the file journal, measured in this run.
    if ({"reliable", "latency"} & set(scenarios)) and "router-redis" in contenders \
            and "router" not in contenders:
        contenders.insert(contenders.index("router-redis"), "router")
        notes.append("router added: router-redis's ratios are taken against it")
    # Ratios against the single-address and proxy figures need those figures in this run.
    if ({"gateways", "reliable"} & set(scenarios)) and "throughput" not in scenarios:
        scenarios.insert(0, "throughput")
        notes.append("throughput added: the gateways/reliable ratios are taken against it")
    if "reliable" in scenarios and "router" in contenders and "proxy" not in contenders:
        contenders.insert(0, "proxy")
    return dataclasses.replace(opts, scenarios=tuple(scenarios),
                               contenders=tuple(contenders)), notes


def publish(report: str, opts: HopOptions) -> None:
    """Print the report and append it to --markdown."""
    print(report)
    if opts.markdown:
        append_markdown(opts.markdown, report)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks hop``: run, report; 1 if any trial failed."""
    opts = parse_options(HopOptions, argv, prog="python -m benchmarks hop", doc=__doc__)
    if opts.report:
        saved = load_run(opts.report)
        publish(markdown(saved["rows"], options_from_saved(HopOptions, saved["options"]),
                         saved.get("notes", []), saved["environment"], saved.get("when")),
                opts)
        return 0
    opts, notes = complete(opts)
    stop_all_on_exit()
    env_start = environment()
    try:
        rows = run(opts.scenarios, opts.contenders, opts)
    except KeyboardInterrupt:
        stop_all()
        return 130
    finally:
        stop_all()
    when = time.strftime("%Y-%m-%d %H:%M")
    env = environment()
    notes += change_notes(env_start, env, ("commit", "uncommitted", "router_core_built"))
    print()
    publish(markdown(rows, opts, notes, env=env, when=when), opts)
    if opts.json:
        save_run(opts.json, env, saved_options(opts), when, notes, rows)
    return 1 if any("error" in r for r in rows) else 0
