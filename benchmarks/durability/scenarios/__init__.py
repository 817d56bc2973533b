"""The durability scenarios, one module each, in the order ``--scenarios`` lists them
(the report orders its tables by ``TABLE_ORDER``)."""

from __future__ import annotations

from benchmarks.durability.scenarios import (backlog, closed, metrics, rate, scrape,
                                             throughput)
from benchmarks.durability.scenarios.base import Scenario

SCENARIOS: dict[str, Scenario] = {m.SCENARIO.name: m.SCENARIO for m in (
    throughput, closed, rate, backlog, metrics, scrape)}

#: The report's tables: the load scenarios together, then backlog and metrics.
TABLE_ORDER = ("throughput", "closed", "rate", "scrape", "backlog", "metrics")

__all__ = ["SCENARIOS", "TABLE_ORDER", "Scenario"]
