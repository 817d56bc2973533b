"""The users' benchmark: a Python publisher process -> a Python receiver process through
this SDK, side by side with nats-py (nats-server core and JetStream) and redis-py +
hiredis (redis-server), interleaved rounds, medians.

    python -m benchmarks sdk                          # every contender, 3 rounds (~4 min)
    python -m benchmarks sdk -c sdk,nats,redis --repeat 1 --rates ''
    python -m benchmarks sdk --markdown benchmarks/RESULTS.md --json sdk.json

Contenders (each trial starts its own server on a free loopback port, stopped by id):
  sdk           this SDK, blocking, best effort (NOTICE)
  sdk-reliable  this SDK, blocking, ORDER with DELIVERED receipts, journal + fsync
  sdk-asyncio   this SDK, asyncio, best effort
  sdk-curve     sdk through a router with credentials and CURVE (benchmarks/sdk/curve.py)
  nats          nats-py through nats-server, core
  jetstream     nats-py, JetStream file storage, acked publish
  redis         redis-py + hiredis, pipelined PUBLISH through redis-server

nats-server and redis-server come from Debian (apt-get install nats-server
redis-server); nats-py, redis and hiredis from the project's `bench` extra.
"""

from __future__ import annotations

import os
import sys
import time

from benchmarks.harness.machine import environment, router_available
from benchmarks.harness.options import options_from_saved, parse_options, saved_options
from benchmarks.harness.procs import stop_all, stop_all_on_exit
from benchmarks.harness.report import append_markdown, load_run, save_run
from benchmarks.sdk.options import SdkOptions
from benchmarks.sdk.report import markdown, one_line
from benchmarks.sdk.servers import install_hint, missing, missing_clients, versions
from benchmarks.sdk.trial import run_trial


class SetupError(Exception):
    """What the machine lacks for this run, and how to get it (one line)."""


def plan(opts: SdkOptions) -> list[tuple[str, float]]:
    """(contender, rate) in run order: every round runs each trial of every contender."""
    out = []
    for _ in range(opts.repeat):
        for rate in (0.0, *map(float, opts.rates)):
            out += [(c, rate) for c in opts.contenders]
    return out


def check_setup(opts: SdkOptions) -> None:
    """Raise :class:`SetupError` naming what to install."""
    packages = missing(opts.contenders)
    if packages:
        raise SetupError(install_hint(packages))
    clients = missing_clients(opts.contenders)
    if clients:
        raise SetupError(f"Python clients missing: {', '.join(clients)}; pip install -e "
                         "'.[bench]'")
    if any(c.startswith("sdk") for c in opts.contenders):
        ok, why = router_available()
        if not ok:
            raise SetupError(f"`import router.core` failed ({why}); build it: pip install -e .")
    if opts.payload < 16:
        raise SetupError(f"--payload must be at least 16 bytes, got {opts.payload}")


def run(opts: SdkOptions, log=print) -> list[dict]:
    """Every trial of the plan, one row each (a failed trial's row has ``error``)."""
    rows = []
    for i, (c, rate) in enumerate(plan(opts)):
        label = f"{c:<13}" + (f" @ {rate:,.0f}/s" if rate else " throughput")
        row = run_trial(c, opts, rate)
        row["round"] = i // (len(opts.contenders) * (1 + len(opts.rates)))
        if opts.verbose:
            log(f"{label:<30} {one_line(row)}")
        rows.append(row)
    return rows


def env_record() -> dict:
    env = environment()
    env.update(versions())
    env["nproc"] = os.cpu_count()
    env["redis"] = env.pop("redis", "-")
    return env


def publish(report: str, opts: SdkOptions) -> None:
    print(report)
    if opts.markdown:
        append_markdown(opts.markdown, report)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks sdk``: run, report; 1 if any trial failed, 2 if the
    machine lacks a server or client."""
    opts = parse_options(SdkOptions, argv, prog="python -m benchmarks sdk", doc=__doc__)
    if opts.report:
        saved = load_run(opts.report)
        publish(markdown(saved["rows"], options_from_saved(SdkOptions, saved["options"]),
                         saved["environment"], saved.get("notes", []), saved.get("when")),
                opts)
        return 0
    try:
        check_setup(opts)
    except SetupError as exc:
        print(f"benchmarks sdk: {exc}", file=sys.stderr)
        return 2
    stop_all_on_exit()
    try:
        rows = run(opts)
    except KeyboardInterrupt:
        stop_all()
        return 130
    finally:
        stop_all()
    when = time.strftime("%Y-%m-%d %H:%M")
    env = env_record()
    print()
    publish(markdown(rows, opts, env, [], when), opts)
    if opts.json:
        save_run(opts.json, env, saved_options(opts), when, [], rows)
    return 1 if any("error" in r for r in rows) else 0
