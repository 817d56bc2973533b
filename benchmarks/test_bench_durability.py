"""pytest-benchmark suite: short versions of ``python -m benchmarks durability``'s scenarios.

    pytest benchmarks/test_bench_durability.py
    DUR_BENCH_COUNT=500000 pytest benchmarks/test_bench_durability.py --benchmark-json out.json

Not collected by the project's default ``pytest`` run (``testpaths = tests``); run it by
path. Each test runs one scenario (every journal mode where it has modes) side by side
and stores the figures, the ratios between them and whether the issue's targets were
met in ``benchmark.extra_info``; the timed value is the whole scenario's wall time and is
not the figure to read. The tests fail on lost, duplicated or reordered messages and on
failed trials, never on a missed performance target (this 2-core machine is shared).
"""

from __future__ import annotations

import os

import pytest

from benchmarks.durability.command import run
from benchmarks.durability.options import DurabilityOptions
from benchmarks.durability.report import commits_seen, ratios, summarize
from benchmarks.harness.machine import router_available as router_importable
from benchmarks.harness.procs import stop_all

pytestmark = pytest.mark.timeout(900)

COUNT = int(os.environ.get("DUR_BENCH_COUNT", "100000"))
BACKLOG = int(os.environ.get("DUR_BENCH_BACKLOG", "100000"))
METRICS_COUNT = int(os.environ.get("DUR_BENCH_METRICS_COUNT", "200000"))
DURATION = float(os.environ.get("DUR_BENCH_DURATION", "1.0"))
REPEAT = int(os.environ.get("DUR_BENCH_REPEAT", "1"))


@pytest.fixture(scope="module", autouse=True)
def router_available():
    ok, why = router_importable()
    if not ok:
        pytest.skip(f"router unavailable: import router.core failed: {why}")


@pytest.fixture
def opts():
    # quiet_wait=0: the suite runs its trials back to back (the command waits up to 30 s
    # for a quiet machine before each).
    o = DurabilityOptions(count=COUNT, backlog=BACKLOG, metrics_count=METRICS_COUNT,
                          duration=DURATION, repeat=REPEAT, deadline=120.0, quiet_wait=0.0,
                          verbose=False)
    yield o
    stop_all()


def run_scenarios(benchmark, scenarios, opts):
    rows = benchmark.pedantic(run, args=(scenarios, opts),
                              kwargs={"log": lambda *_: None}, rounds=1, iterations=1)
    summary = summarize(rows)
    info = benchmark.extra_info
    info["router_commits"] = commits_seen(rows)
    for (sc, label, rate), s in summary.items():
        key = f"{sc}/{label}" + (f"@{rate:.0f}" if rate else "")
        info[key] = {k: v for k, v in s.items() if v is not None and k != "errors"}
    info["ratios"] = ratios(summary, rows)
    errors = [f"{r['scenario']}/{r['label']}: {r['error']}" for r in rows if "error" in r]
    assert not errors, "\n\n".join(errors)
    return rows, summary


def check_load_rows(rows):
    """Every accepted message delivered exactly once, in order; refusals only by code."""
    for r in rows:
        tag = f"{r['scenario']}/{r['label']}"
        refused = sum((r.get("receipt_codes") or {}).values())
        assert r["accepted"] + refused == r["sent"], (
            f"{tag}: {r['accepted']} ACCEPTED + {refused} refused != {r['sent']} sent; "
            f"receipts {r.get('receipts')}")
        assert r["received"] == r["accepted"], (
            f"{tag}: received {r['received']} of {r['accepted']} accepted")
        assert r["delivered_receipts"] == r["accepted"], (
            f"{tag}: {r['delivered_receipts']} DELIVERED receipts for {r['accepted']} accepted")
        assert r["duplicates"] == 0 and r["out_of_order"] == 0, (
            f"{tag}: {r['duplicates']} duplicates, {r['out_of_order']} out of order")


def test_durable_throughput(benchmark, opts):
    rows, summary = run_scenarios(benchmark, ["throughput"], opts)
    check_load_rows(rows)
    fs = summary[("throughput", "fsync", 0.0)]
    benchmark.extra_info["target: >= 100k ACCEPTED/s with journal+fsync"] = (
        (fs["accepted_msg_s"] or 0) >= 100_000)


def test_closed_loop(benchmark, opts):
    rows, _ = run_scenarios(benchmark, ["closed"], opts)
    check_load_rows(rows)


def test_fixed_rate(benchmark, opts):
    rows, summary = run_scenarios(benchmark, ["rate"], opts)
    check_load_rows(rows)
    fs = summary[("rate", "fsync", opts.rate)]
    benchmark.extra_info["target: p99 time-to-ACCEPTED < 10 ms (journal+fsync)"] = (
        fs["accept.p99_ms"] is not None and fs["accept.p99_ms"] < 10)


def test_backlog_resume(benchmark, opts):
    rows, summary = run_scenarios(benchmark, ["backlog"], opts)
    for r in rows:
        assert r["received"] == opts.backlog, f"{r['label']}: {r['received']}/{opts.backlog}"
        assert r["duplicates"] == 0 and r["out_of_order"] == 0
    restart = [r for r in rows if r["label"] == "restart"]
    for r in restart:
        assert r["startup"].get("pending") == opts.backlog, r["startup"]
    live = summary[("backlog", "live", 0.0)]
    benchmark.extra_info["target: HELLO to 100,000th DELIVER < 2 s"] = (
        live["hello_to_last_s"] is not None and live["hello_to_last_s"] < 2.0)


def test_metrics_cost(benchmark, opts):
    opts.repeat = max(2, opts.repeat)  # one off/on and one on/off pair at least
    rows, summary = run_scenarios(benchmark, ["metrics"], opts)
    on = summary[("metrics", "on", 0.0)]
    assert on.get("scrape") and on["scrape"]["failed"] == 0, on.get("scrape")
    ratio = ratios(summary, rows).get(
        "metrics on+scraped / off, NOTICE msg/s (medians)")
    info = benchmark.extra_info
    info["target: metrics on / off >= 0.95"] = ratio is not None and ratio >= 0.95
    info["target: GET /metrics under load < 50 ms (max)"] = (
        on["scrape"]["max_ms"] is not None and on["scrape"]["max_ms"] < 50)


def test_scrape_under_durable_load(benchmark, opts):
    rows, summary = run_scenarios(benchmark, ["scrape"], opts)
    check_load_rows(rows)
    for key, s in summary.items():
        assert s.get("scrape") and s["scrape"]["failed"] == 0, (key, s.get("scrape"))
