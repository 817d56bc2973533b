"""latency: best effort to one address at fixed offered rates (--rates), --duration
seconds each; the sender is open loop, so a stall shows in the tail."""

from __future__ import annotations

from benchmarks.hop.scenarios import throughput
from benchmarks.hop.scenarios.base import Scenario

SCENARIO = Scenario(
    name="latency",
    # router-redis runs it too (best effort never touches the store: it shows what the
    # store's presence, lease renewals included, costs the best-effort path)
    contenders=("proxy", "proxy-curve", "pyloop", "router", "router-plain", "router-curve",
                "router-redis"),
    title=lambda o: f"Latency at fixed offered rates, {o.duration:g} s each",
    receivers=throughput.receivers,  # the same receiver, paced
    rates=lambda o: [float(r) for r in o.rates],
    paced=True,
)
