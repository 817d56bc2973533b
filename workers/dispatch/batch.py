"""Batched assignment: the pending orders assigned together, not one at a time.

Committing each order to its best rider the moment it arrives (:func:`scoring.rank`
with ``limit=1``) is greedy: at peak the rider it takes is often the one a later order
needed more. Here the orders waiting for a rider are assigned together every few
seconds by a min-cost assignment (scipy's ``linear_sum_assignment``) over orders x
candidate riders, with the same insertion costs ``rank`` computes. It runs in rounds:
a rider who took an order in round one is scored again, with that order on its route,
for what is still unassigned in round two (a rider carries up to its capacity).

**Idle capacity.** ``rank``'s weights add an order to a busy rider when the detour is
small, which is right at peak and wrong off peak, where an idle rider nearby would
deliver sooner. When idle riders are plentiful (the
fleet has ``idle_per_order`` idle riders per order in the batch), taking an order on
top of others costs ``BatchSettings.stack`` more per order already in hand, and each
order's candidates include the nearest idle riders even when busy ones are nearer, so
the assignment prefers an idle rider unless stacking saves more.

Nothing here does I/O or keeps state between calls; the same inputs give the same
assignment (ties go to the smaller row and column: orders in the given order, riders
by id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from .geo import TravelModel
from .scoring import (DEFAULT_TRAVEL, DEFAULT_WEIGHTS, Candidate, Order, Rider, RiderIndex,
                      Weights, apply_insertion, nearest, score_many)

#: Cost of "not assigned in this round": an order no candidate can take stays pending.
NONE = 1e12


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """How the batch is formed and solved."""

    rounds: int = 2              # assignment rounds (a rider can take one order per round)
    stack: float = 3000.0        # per order in hand, when idle riders are plentiful
    idle_per_order: float = 3.0  # ... plentiful: this many idle riders per order batched
    idle_candidates: int = 2     # nearest idle riders added to each order's candidates
    k: int = 8                   # candidates sought around the merchant (as rank)
    radius: float = 500.0
    max_radius: float = 6000.0
    max_candidates: int = 32


DEFAULT_BATCH = BatchSettings()


class Assignment(NamedTuple):
    """One order given to one rider: ``index`` into the batch's orders, and the
    insertion, relative to the rider's route as earlier assignments of the same batch
    left it (apply them in the order returned)."""

    index: int
    candidate: Candidate


class Batch(NamedTuple):
    """What :func:`assign` decided."""

    assignments: list[Assignment]     # in the order to apply them
    ranked: list[list[Candidate]]     # per order, its first round's candidates, best first
    loaded: dict[object, Rider]       # the assigned riders with their new routes and loads


def assign(orders: Sequence[Order], riders: RiderIndex, now: float,
           weights: Weights = DEFAULT_WEIGHTS, settings: BatchSettings = DEFAULT_BATCH, *,
           travel: TravelModel = DEFAULT_TRAVEL,
           exclude: Sequence[set] | None = None) -> Batch:
    """Assign ``orders`` (oldest first) to riders together; orders left out had no
    candidate with room. ``exclude[i]``: riders order i must not get (they declined it).
    ``riders`` is not changed: :attr:`Batch.loaded` holds the riders as the batch left
    them."""
    shadow: dict[object, Rider] = {}      # riders as this batch has loaded them
    pending = list(range(len(orders)))
    plentiful = sum(1 for r in riders if r.idle) >= settings.idle_per_order * len(orders)
    out: list[Assignment] = []
    ranked: list[list[Candidate]] = []
    for _ in range(settings.rounds):
        if not pending:
            break
        found = [_found(orders[i], riders, shadow, settings, exclude[i] if exclude else ())
                 for i in pending]
        rows = score_many([orders[i] for i in pending], found, now, weights, travel=travel)
        if settings.stack and plentiful:
            for cands in rows:
                for c in cands:
                    c.score += settings.stack * c.load
        if not ranked:
            ranked = [sorted(r, key=lambda c: (c.score, c.rider_id)) for r in rows]
        taken = _solve(rows)
        for row, cand in taken:
            i = pending[row]
            out.append(Assignment(i, cand))
            _load(shadow, riders, cand, orders[i])
        done = {row for row, _ in taken}
        pending = [i for row, i in enumerate(pending) if row not in done]
    return Batch(out, ranked or [[] for _ in orders], shadow)


def _found(order: Order, riders: RiderIndex, shadow: dict, s: BatchSettings,
           exclude) -> list[Rider]:
    """The order's candidates: the nearest available riders and the nearest idle ones
    even if farther, as this batch has loaded them, without the ``exclude``d."""
    found, hits = riders.near(order.merchant, s.k, s.radius, s.max_radius)
    found = nearest(found, hits, s.max_candidates)
    if s.idle_candidates:
        idle, hits = riders.near(order.merchant, s.idle_candidates, s.radius, s.max_radius,
                                 idle_only=True)
        seen = {r.id for r in found}
        found += [r for r in nearest(idle, hits, s.idle_candidates) if r.id not in seen]
    return [r for r in (shadow.get(r.id, r) for r in found)
            if r.available and r.id not in exclude]


def _solve(rows: list[list[Candidate]]) -> list[tuple[int, Candidate]]:
    """Min-cost assignment of rows (orders) to riders, each rider at most once."""
    cols: dict[object, int] = {}
    for cands in rows:
        for c in cands:
            cols.setdefault(c.rider_id, len(cols))
    if not cols:
        return []
    cost = np.full((len(rows), len(cols)), NONE)
    by_cell: dict[tuple[int, int], Candidate] = {}
    for r, cands in enumerate(rows):
        for c in cands:
            j = cols[c.rider_id]
            cost[r, j] = c.score
            by_cell[r, j] = c
    picked_rows, picked_cols = linear_sum_assignment(cost)
    return [(int(r), by_cell[int(r), int(j)]) for r, j in zip(picked_rows, picked_cols)
            if cost[r, j] < NONE]


def _load(shadow: dict, riders: RiderIndex, cand: Candidate, order: Order) -> None:
    """Give the rider the order in this batch's view of it."""
    rider = shadow.get(cand.rider_id) or riders[cand.rider_id]
    shadow[cand.rider_id] = replace(rider, route=apply_insertion(rider.route, cand, order),
                                    load=rider.load + 1)
