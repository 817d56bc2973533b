"""rate: the throughput trial at a fixed offered rate (--rate, --duration), every mode."""

from __future__ import annotations

from benchmarks.durability.scenarios.load import load_scenario

SCENARIO = load_scenario(
    "rate",
    trials=lambda opts, i: [(m, opts.rate) for m in opts.modes],
    title=lambda o: f"At a fixed offered rate: {o.rate:,.0f} msg/s for {o.duration:g} s",
)
