"""The hop scenarios, one module each, in the order runs and reports list them."""

from __future__ import annotations

from benchmarks.hop.scenarios import fanout, gateways, latency, reliable, throughput
from benchmarks.hop.scenarios.base import Scenario, TrialSpec

SCENARIOS: dict[str, Scenario] = {m.SCENARIO.name: m.SCENARIO for m in (
    throughput, gateways, reliable, latency, fanout)}

__all__ = ["SCENARIOS", "Scenario", "TrialSpec"]
