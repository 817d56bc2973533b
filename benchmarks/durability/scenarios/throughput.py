"""throughput: ORDER as fast as a window of unconfirmed messages allows (--window: a
message counts until its ACCEPTED receipt), an ENDPOINT acking cumulatively; every
journal mode (--modes) side by side, interleaved per repeat."""

from __future__ import annotations

from benchmarks.durability.scenarios.load import load_scenario

SCENARIO = load_scenario(
    "throughput",
    trials=lambda opts, i: [(m, 0.0) for m in opts.modes],
    title=lambda o: (f"Durable reliable throughput: ORDER, {o.count:,} messages, at most "
                     f"{o.window:,} without an ACCEPTED receipt, receiver acks cumulatively"),
)
