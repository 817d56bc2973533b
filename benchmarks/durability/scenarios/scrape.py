"""scrape: the throughput trial (journal+fsync) with the metrics endpoint on and scraped
every --scrape-interval, at saturation and at --rate: GET /metrics durations on a router
under durable load, and its accepted msg/s against the throughput scenario's."""

from __future__ import annotations

from benchmarks.durability.scenarios.load import load_scenario

SCENARIO = load_scenario(
    "scrape",
    trials=lambda opts, i: [("fsync", 0.0), ("fsync", opts.rate)],
    title=lambda o: (f"Journal + fsync with /metrics scraped every "
                     f"{o.scrape_interval * 1000:.0f} ms: saturation ({o.count:,} messages) "
                     f"and {o.rate:,.0f} msg/s"),
)
