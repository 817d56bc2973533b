"""What a hop scenario is: which contenders run it, at which rates, and which receivers
(and sender changes) a trial of it needs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from benchmarks.hop.options import HopOptions


@dataclass(frozen=True)
class TrialSpec:
    """What a scenario builds its driver configs from."""

    opts: HopOptions
    count: int       # messages the sender sends
    workdir: str     # the trial's scratch directory (latency files go there)
    protocol: bool   # whether the hop speaks our protocol (not the bare proxy)

    def lat_file(self, i: int) -> str:
        """Where receiver ``i`` writes its raw latencies."""
        return os.path.join(self.workdir, f"lat{i}.bin")


def unpaced(opts: HopOptions) -> list[float]:
    """One trial, the sender as fast as it goes (rate 0)."""
    return [0.0]


@dataclass(frozen=True)
class Scenario:
    """One hop scenario.

    ``receivers(sender, recv, spec)`` returns one config per receiver process, starting
    from ``recv`` (the settings every receiver shares); it may change ``sender`` in place.
    A ``paced`` scenario's sender sends ``rate * duration`` messages at each of
    ``rates(opts)``; the others send ``count`` as fast as they can.
    """

    name: str
    contenders: tuple[str, ...]
    title: Callable[[HopOptions], str]
    receivers: Callable[[dict, dict, TrialSpec], list[dict]]
    rates: Callable[[HopOptions], list[float]] = unpaced
    paced: bool = False


def endpoint_hello(name: str, addresses: list[str]) -> dict:
    """The HELLO of an ENDPOINT receiver binding ``addresses``."""
    return {"role": "ENDPOINT", "name": name, "addresses": addresses}
