"""Durability benchmarks: what the journal, a backlog resume and the metrics endpoint cost.

    python -m benchmarks durability                       # every scenario (~4 min)
    python -m benchmarks durability -s throughput,rate --repeat 3
    python -m benchmarks durability --repeat 3 --markdown benchmarks/RESULTS-durability.md
    python -m benchmarks durability -h                    # every option

Scenarios (benchmarks/durability/scenarios/, one module each; every router is `python -m
router serve` with a fresh --data-dir per trial):
  throughput  ORDER class, as fast as a window of unconfirmed messages allows (--window:
              a message counts until its ACCEPTED receipt), an ENDPOINT receiver acking
              cumulatively; per message the time from send to its ACCEPTED receipt.
              Modes: journal+fsync, journal without fsync, no journal (--modes), side by
              side, interleaved per repeat.
  closed      the same with the window counted until the DELIVERED receipt (as in the
              hop benchmark's reliable scenario): acceptance cannot run ahead of delivery.
  rate        the same at a fixed offered rate (--rate, --duration), every mode.
  backlog     --backlog ORDER messages to rider:1 while nobody has bound it; once all are
              ACCEPTED an ENDPOINT says HELLO binding rider:1 with cursor 0: time from
              HELLO to the last DELIVER received, to its acks sent, and to the sender's
              last DELIVERED receipt. Then the same after SIGKILL of the router and a
              restart on the same data directory: the router's replay time (its log
              line), start-up time, and the drain after it.
  metrics     best-effort NOTICE throughput (--metrics-count messages, one address) with
              --metrics-port on and a scraper GETting /metrics every --scrape-interval,
              against metrics off; trials alternate (off,on / on,off ...).
  scrape      the throughput scenario (journal+fsync) with the metrics endpoint on and
              scraped: GET /metrics durations on a router under durable load, and its
              accepted msg/s against the throughput scenario's journal+fsync figure.

All processes are on 127.0.0.1, every wait has a deadline, and every process a trial
starts is stopped (its process group, by id) when the trial ends or the run is
interrupted. The drivers are benchmarks/drivers/ (loadgen.pyx: GIL released, libzmq
called directly; durability.py: this benchmark's driver program).
"""

from __future__ import annotations

import sys
import tempfile
import time
from typing import Callable

from benchmarks.drivers.build import ensure_built
from benchmarks.durability.options import DurabilityOptions
from benchmarks.durability.report import markdown, one_line
from benchmarks.durability.scenarios import SCENARIOS
from benchmarks.harness.machine import (environment, filesystem_of, router_available,
                                        router_stamp, wait_quiet)
from benchmarks.harness.options import options_from_saved, parse_options, saved_options
from benchmarks.harness.procs import stop_all, stop_all_on_exit
from benchmarks.harness.report import (append_markdown, change_notes, environment_table,
                                       load_run, save_run)


def plan(scenarios, opts: DurabilityOptions) -> list[tuple[str, str, float]]:
    """(scenario, label, rate) in run order; every scenario's trials once per repeat."""
    return [(sc, label, rate) for i in range(opts.repeat) for sc in scenarios
            for label, rate in SCENARIOS[sc].trials(opts, i)]


def run(scenarios, opts: DurabilityOptions, log: Callable[[str], None] = print
        ) -> list[dict]:
    """Every trial of the plan, one row each (a failed trial's row has ``error``)."""
    ensure_built()
    rows = []
    for sc, label, rate in plan(scenarios, opts):
        waited = wait_quiet(opts.quiet_wait) if opts.quiet_wait > 0 else 0.0
        if opts.verbose:
            log(f"... {sc:<10} {label:<9}" + (f" @ {rate:,.0f}/s" if rate else "")
                + (f" (waited {waited:.1f} s for a quiet machine)" if waited > 1 else ""))
        row = SCENARIOS[sc].run(label, rate, opts)
        row["quiet_wait_s"] = waited
        if opts.verbose:
            log("    " + one_line(row))
        rows.append(row)
    return rows


def full_environment() -> dict:
    """:func:`environment` plus the filesystem the journals are written to."""
    env = environment()
    env["fs"] = filesystem_of(tempfile.gettempdir())
    return env


def publish(report: str, env: dict, opts: DurabilityOptions) -> None:
    """Print the report and append it to --markdown (a new file gets a title and the
    machine table first)."""
    print(report)
    if opts.markdown:
        preamble = ("# Durability benchmark results\n\n"
                    "Measured with `python -m benchmarks durability` (benchmarks/durability/"
                    "command.py says what each scenario does; the drivers are those of "
                    "benchmarks/README.md). Every figure was measured on this machine by "
                    "the run named.\n\n## Machine and versions\n\n"
                    + "\n".join(environment_table(env)) + "\n\n")
        append_markdown(opts.markdown, report, preamble)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks durability``: run, report; 1 if any trial failed."""
    opts = parse_options(DurabilityOptions, argv, prog="python -m benchmarks durability",
                         doc=__doc__)
    if opts.report:
        saved = load_run(opts.report)
        publish(markdown(saved["rows"], options_from_saved(DurabilityOptions, saved["options"]),
                         saved.get("notes", []), saved["environment"], saved.get("when")),
                saved["environment"], opts)
        return 0
    ok, why = router_available()
    if not ok:
        print(f"router unavailable: import router.core failed: {why}", file=sys.stderr)
        return 2
    notes = []
    if "scrape" in opts.scenarios and "throughput" not in opts.scenarios:
        notes.append("the scrape scenario's throughput ratio needs the throughput scenario "
                     "in the same run; none taken")
    stop_all_on_exit()
    start = router_stamp()
    try:
        rows = run(opts.scenarios, opts)
    except KeyboardInterrupt:
        stop_all()
        return 130
    finally:
        stop_all()
    notes += change_notes(start, router_stamp(), ("commit", "uncommitted", "core_built"))
    when = time.strftime("%Y-%m-%d %H:%M")
    env = full_environment()
    print()
    publish(markdown(rows, opts, notes, env=env, when=when), env, opts)
    if opts.json:
        save_run(opts.json, env, saved_options(opts), when, notes, rows)
    return 1 if any("error" in r for r in rows) else 0
