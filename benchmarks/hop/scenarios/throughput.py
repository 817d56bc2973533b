"""throughput: best effort (NOTICE), one address, as fast as it goes."""

from __future__ import annotations

from benchmarks.hop.scenarios.base import Scenario, TrialSpec, endpoint_hello


def receivers(sender: dict, recv: dict, spec: TrialSpec) -> list[dict]:
    """One ENDPOINT receiver bound to user:1 (no HELLO for the bare proxy)."""
    hello = endpoint_hello("bench-endpoint", ["user:1"]) if spec.protocol else None
    return [dict(recv, count=spec.count, hello=hello, lat_file=spec.lat_file(0))]


SCENARIO = Scenario(
    name="throughput",
    contenders=("proxy", "proxy-curve", "pyloop", "router", "router-plain", "router-curve"),
    title=lambda o: f"Throughput, best effort (NOTICE), one address, {o.count:,} messages",
    receivers=receivers,
)
