"""Every option of ``python -m benchmarks durability``, written once."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.durability.router import MODES
from benchmarks.durability.scenarios import SCENARIOS
from benchmarks.harness.options import TrialOptions, comma_list, option


@dataclass
class DurabilityOptions(TrialOptions):
    """What a durability run measures and how; the pytest suite builds it directly."""

    scenarios: tuple = option(tuple(SCENARIOS), "comma list of " + ", ".join(SCENARIOS),
                              flags=("-s", "--scenarios"), parse=comma_list(str, SCENARIOS))
    modes: tuple = option(tuple(MODES), "comma list of " + ", ".join(MODES),
                          parse=comma_list(str, MODES))
    count: int = option(500_000, "messages per throughput/scrape trial",
                        flags=("-n", "--count"))
    window: int = option(20_000, "sender: unconfirmed messages in flight at most")
    router_window: int = option(0, "router --window (deliveries in flight per address); "
                                   "0: default")
    commit_batch: int = option(0, "router --commit-batch; 0: default")
    rate: float = option(20_000.0, "rate scenario: msg/s")
    duration: float = option(3.0, "rate scenario: seconds")
    backlog: int = option(100_000, "backlog scenario: messages")
    restart: bool = option(True, "backlog: skip the SIGKILL + restart case",
                           flags=("--no-restart",))
    metrics_count: int = option(500_000, "metrics scenario: NOTICE messages per trial")
    scrape_interval: float = option(0.1, "seconds between GETs")
    payload: int = option(200, "payload bytes (>= 16)")
    kind: str = option("order.created", "the SENDs' kind")
    deadline: float = option(120.0, "seconds per phase, at most")
    idle: float = option(2.0, "receiver stops after this long without a message")
    repeat: int = option(1, "runs per figure (median)")
    router_args: str = option("", "extra `router serve` arguments")
    quiet_wait: float = option(30.0, "before each trial wait up to this many seconds until "
                                     "other processes use less than 10% of the machine "
                                     "(0: don't wait)")
