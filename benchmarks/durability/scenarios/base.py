"""What a durability scenario is: its trials per repeat, how one runs, its line while
the run goes and its table in the report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from benchmarks.durability.options import DurabilityOptions


@dataclass(frozen=True)
class Scenario:
    """One durability scenario.

    ``trials(opts, i)`` lists the (label, rate) trials of repeat ``i``; ``run(label,
    rate, opts)`` runs one and returns its row; ``line(row)`` gives the row's figures for
    the progress line; ``table(summary, opts)`` the report's section (no lines when the
    summary has none of this scenario's figures).
    """

    name: str
    trials: Callable[[DurabilityOptions, int], list[tuple[str, float]]]
    run: Callable[[str, float, DurabilityOptions], dict]
    line: Callable[[dict], list[str]]
    table: Callable[[dict, DurabilityOptions], list[str]]
