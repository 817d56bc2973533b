"""closed: throughput with the window counted until the DELIVERED receipt (as in the hop
benchmark's reliable scenario): acceptance cannot run ahead of delivery."""

from __future__ import annotations

from benchmarks.durability.scenarios.load import load_scenario

SCENARIO = load_scenario(
    "closed",
    trials=lambda opts, i: [(m, 0.0) for m in opts.modes],
    title=lambda o: (f"Closed loop: the same with at most {o.window:,} messages without a "
                     "DELIVERED receipt"),
)
