"""pytest-benchmark suite: short versions of ``python -m benchmarks hop``'s scenarios.

    pytest benchmarks/test_bench_hop.py
    HOP_BENCH_COUNT=500000 pytest benchmarks/test_bench_hop.py --benchmark-json out.json

Each test runs one scenario for every contender that supports it, side by side in one
process tree, and records the figures and the ratios between them in
``benchmark.extra_info`` (the timed value is the whole scenario's wall time, processes
included; the figures to read are in extra_info). The router contender is skipped while
``import router.core`` fails.
"""

from __future__ import annotations

import os

import pytest

from benchmarks.harness.machine import router_available
from benchmarks.harness.procs import stop_all
from benchmarks.hop.command import run
from benchmarks.hop.options import HopOptions
from benchmarks.hop.report import ratios, summarize
from benchmarks.hop.scenarios import SCENARIOS

pytestmark = pytest.mark.timeout(900)

COUNT = int(os.environ.get("HOP_BENCH_COUNT", "100000"))
DURATION = float(os.environ.get("HOP_BENCH_DURATION", "1.0"))


@pytest.fixture(scope="module")
def router_state():
    ok, why = router_available()
    return ok, why


@pytest.fixture
def opts():
    o = HopOptions(count=COUNT, duration=DURATION, deadline=60.0, idle=2.0, verbose=False)
    yield o
    stop_all()


def contenders_for(scenario: str, router_state) -> list[str]:
    ok, _ = router_state
    # router-redis (a Redis primary and replica per trial, redis-server from Debian) is
    # left to `python -m benchmarks hop -c router,router-redis`.
    return [c for c in SCENARIOS[scenario].contenders
            if c != "router-redis" and (c != "router" or ok)]


def run_scenarios(benchmark, scenarios, contenders, opts, router_state):
    rows = benchmark.pedantic(
        run, args=(scenarios, contenders, opts), kwargs={"log": lambda *_: None},
        rounds=1, iterations=1,
    )
    summary = summarize(rows)
    info = benchmark.extra_info
    info["count"] = opts.count
    info["router"] = "available" if router_state[0] else f"skipped: {router_state[1]}"
    for (sc, c, rate), s in summary.items():
        key = f"{sc}/{c}" + (f"@{rate:.0f}" if rate else "")
        info[key] = {k: v for k, v in s.items() if v is not None and k != "errors"}
    info["ratios"] = ratios(summary)
    errors = [f"{r['scenario']}/{r['contender']}: {r['error']}" for r in rows if "error" in r]
    assert not errors, "\n\n".join(errors)
    return rows, summary


def test_throughput(benchmark, opts, router_state):
    rows, summary = run_scenarios(
        benchmark, ["throughput"], contenders_for("throughput", router_state), opts,
        router_state)
    proxy = summary[("throughput", "proxy", 0.0)]
    assert proxy["delivered"] == proxy["expected"], "the bare proxy lost messages"
    for r in rows:
        assert r["duplicates"] == 0, f"{r['contender']} delivered duplicates"


def test_gateways_10k_addresses(benchmark, opts, router_state):
    contenders = contenders_for("gateways", router_state)
    run_scenarios(benchmark, ["throughput", "gateways"], contenders, opts, router_state)


def test_reliable(benchmark, opts, router_state):
    if not router_state[0]:
        pytest.skip(f"router unavailable: {router_state[1]}")
    rows, summary = run_scenarios(
        benchmark, ["throughput", "reliable"], ["proxy", "router"], opts, router_state)
    rel = [r for r in rows if r["scenario"] == "reliable"][0]
    assert rel["delivered_receipts"] == rel["sent"], (
        f"DELIVERED receipts {rel['delivered_receipts']} for {rel['sent']} sent; "
        f"receipts {rel['receipts']}, codes {rel['receipt_codes']}")
    assert rel["out_of_order"] == 0 and rel["duplicates"] == 0


def test_latency(benchmark, opts, router_state):
    run_scenarios(benchmark, ["latency"], contenders_for("latency", router_state), opts,
                  router_state)


def test_fanout(benchmark, opts, router_state):
    rows, _ = run_scenarios(benchmark, ["fanout"], contenders_for("fanout", router_state),
                            opts, router_state)
    for r in rows:
        assert r["delivered"] == r["expected"], f"{r['contender']}: fan-out lost messages"


@pytest.mark.parametrize("pack", [0, 16], ids=["frames", "packs-16"])
def test_curve(benchmark, opts, router_state, pack):
    """The secured router in plaintext and with CURVE, side by side: one message per
    frame pair, then 16 per PACK on both legs (docs/PROTOCOL.md, PACK). The ratio to
    read is ``router-curve/router-plain throughput (CURVE)`` in extra_info."""
    if not router_state[0]:
        pytest.skip(f"router unavailable: {router_state[1]}")
    opts.pack = pack
    rows, _ = run_scenarios(benchmark, ["throughput"], ["router-plain", "router-curve"],
                            opts, router_state)
    benchmark.extra_info["pack"] = pack
    for r in rows:
        assert r["delivered"] == r["expected"], f"{r['contender']} lost messages"
        assert r["duplicates"] == 0 and r["out_of_order"] == 0, r["contender"]
