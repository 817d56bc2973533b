"""A small deterministic delivery simulation to compare dispatch policies.

Riders start at random spots in a square city and move in straight lines toward their
next stop at the travel model's effective speed (speed / route factor, so simulated
trips take as long as the model predicts). Orders arrive as a Poisson stream at random
merchants; each waits in a FIFO queue until the policy names a rider. Both policies see
the same seeded riders and orders, so their figures are directly comparable.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from . import batch
from .batch import Batch, BatchSettings
from .geo import Point, TravelModel, distance
from .scoring import (DEFAULT_TRAVEL, DEFAULT_WEIGHTS, Candidate, Order, Rider, RiderIndex,
                      Stop, Weights, greedy_nearest_idle, rank)

Choose = Callable[[Order, RiderIndex, float], "Candidate | None"]
AssignBatch = Callable[[list[Order], RiderIndex, float], Batch]

#: Route-insertion cost: the time an insertion adds to the rider's route plus the time
#: until each customer on it (the new one and those already waiting) gets the food;
#: no lateness, idle, load or heading terms (the insertion baselines).
INSERTION_WEIGHTS = Weights(delivery=1.0, late=0.0, late_step=0.0, idle=0.0,
                            food_wait=0.0, detour=1.0, load=0.0, turn=0.0)

#: Every policy the quality benchmark compares, by name.
POLICIES = ("greedy", "insertion", "batch-insertion", "rank", "batch")


class Policy(NamedTuple):
    """A dispatch policy: ``choose`` names a rider or None; only riders for which
    ``eligible`` holds can ever be chosen (lets the simulation skip hopeless calls).

    A batch policy has ``assign``: the queued orders go to it together every
    ``interval_s`` (``choose`` is then unused); an order that has waited ``max_wait_s``
    for its first batch is assigned alone at once."""

    name: str
    choose: Choose | None
    eligible: Callable[[Rider], bool] = lambda r: r.available
    assign: AssignBatch | None = None
    interval_s: float = 0.0
    max_wait_s: float = math.inf


@dataclass(frozen=True, slots=True)
class QualityResult:
    """Outcome of one simulation run (durations in seconds from order creation)."""

    policy: str
    orders: int
    delivered: int
    mean_delivery_s: float
    p90_delivery_s: float
    late: int                  # delivered after the promise
    undelivered: int           # never delivered before the run ended (not in the mean)
    mean_assign_wait_s: float  # creation until a rider was chosen
    km_per_order: float        # street km ridden per delivered order (rider effort)
    utilisation: float         # share of rider time with an order to carry, while orders arrive


@dataclass(slots=True)
class _Job:
    order: Order
    created: float
    assigned: float = math.nan
    delivered: float = math.nan
    batched: bool = False      # has been in a batch (no longer assigned alone)


@dataclass(slots=True)
class _Leg:
    kind: str          # "pickup" or "dropoff"
    job: _Job
    point: Point


@dataclass(slots=True)
class _Mover:
    rider: Rider
    legs: list[_Leg] = field(default_factory=list)
    busy_until: float = 0.0
    metres: float = 0.0        # straight-line distance ridden


def policy_for(name: str, weights: Weights = DEFAULT_WEIGHTS,
               travel: TravelModel = DEFAULT_TRAVEL, *, interval_s: float = 30.0,
               max_wait_s: float = 30.0,
               settings: BatchSettings = batch.DEFAULT_BATCH) -> Policy:
    """One of :data:`POLICIES`:

    - ``greedy``: the nearest idle rider, each order as it comes (the simplest baseline);
    - ``insertion``: each order as it comes, to the rider whose route it lengthens least
      (same candidates and insertion model as ``rank``);
    - ``batch-insertion``: every 30 s, a min-cost assignment of the queued orders by
      route-insertion cost, in two rounds (a batch baseline);
    - ``rank``: each order as it comes, to the best-ranked rider (``weights``);
    - ``batch``: every ``interval_s``, a min-cost assignment with ``rank``'s weights and
      the idle-capacity term (:mod:`workers.dispatch.batch`), what the worker runs (its
      default second of real time is 30 simulated seconds at the demo city's 30x clock).
    """
    def best_of(w: Weights) -> Choose:
        def choose(order: Order, index: RiderIndex, now: float) -> Candidate | None:
            best = rank(order, index, now, w, travel=travel, limit=1)
            return best[0] if best else None
        return choose

    def batched(w: Weights, s: BatchSettings) -> AssignBatch:
        return lambda orders, index, now: batch.assign(orders, index, now, w, s,
                                                       travel=travel)

    if name == "rank":
        return Policy(name, best_of(weights))
    if name == "insertion":
        return Policy(name, best_of(INSERTION_WEIGHTS))
    if name == "greedy":
        return Policy(name, lambda order, index, now: greedy_nearest_idle(
            order, index, now, travel=travel), lambda r: r.idle)
    if name == "batch-insertion":
        return Policy(name, None, assign=batched(INSERTION_WEIGHTS, replace(settings, stack=0.0)),
                      interval_s=30.0, max_wait_s=math.inf)
    if name == "batch":
        return Policy(name, None, assign=batched(weights, settings), interval_s=interval_s,
                      max_wait_s=max_wait_s)
    raise ValueError(f"unknown policy {name!r}: choose from {', '.join(POLICIES)}")


def make_orders(rng: np.random.Generator, hours: float, orders_per_min: float,
                city_m: float, merchants: int, dt: float,
                travel: TravelModel) -> list[_Job]:
    """The seeded order stream: Poisson arrivals per step, drop-offs 0.5-3 km away."""
    shops = rng.uniform(0, city_m, size=(merchants, 2))
    jobs: list[_Job] = []
    for step in range(int(hours * 3600 / dt)):
        for _ in range(rng.poisson(orders_per_min / 60 * dt)):
            t = step * dt
            shop = shops[rng.integers(merchants)]
            angle, reach = rng.uniform(0, 2 * math.pi), rng.uniform(500, 3000)
            drop = np.clip(shop + reach * np.array([math.cos(angle), math.sin(angle)]),
                           0, city_m)
            m, d = (float(shop[0]), float(shop[1])), (float(drop[0]), float(drop[1]))
            ready = t + rng.uniform(300, 900)
            # The promise a customer sees: prep, the direct ride, and 15 minutes of slack.
            promised = ready + travel.time(m, d) + travel.stop_s + 900
            jobs.append(_Job(Order(len(jobs), m, d, ready, promised), created=t))
    return jobs


def simulate(policy: str | Policy, *, seed: int = 1, hours: float = 2.0, riders: int = 300,
             orders_per_min: float = 14.0, city_m: float = 8000.0, merchants: int = 150,
             capacity: int = 2, dt: float = 5.0, drain_hours: float = 1.0,
             travel: TravelModel = DEFAULT_TRAVEL,
             weights: Weights = DEFAULT_WEIGHTS) -> QualityResult:
    """Run one policy over a seeded city; orders stop arriving after ``hours``.

    The run continues up to ``drain_hours`` longer so that open orders can finish;
    orders still open then count as undelivered (apart from the delivery times).
    """
    if isinstance(policy, str):
        policy = policy_for(policy, weights, travel)
    rng = np.random.default_rng(seed)
    index = RiderIndex(cell_size=500.0)
    movers: dict[int, _Mover] = {}
    for rid, (x, y) in enumerate(rng.uniform(0, city_m, size=(riders, 2))):
        rider = Rider(rid, (float(x), float(y)), capacity=capacity)
        index.upsert(rider)
        movers[rid] = _Mover(rider)
    jobs = make_orders(rng, hours, orders_per_min, city_m, merchants, dt, travel)
    arrivals = deque(jobs)
    queue: deque[_Job] = deque()
    steps = int((hours + drain_hours) * 3600 / dt)
    next_batch = policy.interval_s
    busy_s = 0.0
    for step in range(steps):
        now = step * dt
        if now < hours * 3600:    # utilisation while orders arrive (not the drain)
            busy_s += dt * sum(1 for m in movers.values() if m.legs)
        while arrivals and arrivals[0].created <= now:
            queue.append(arrivals.popleft())
        if policy.assign is None:
            _assign(queue, policy, index, movers, now)
        elif now >= next_batch:
            next_batch = now + policy.interval_s
            _assign_batch(queue, list(queue), policy, index, movers, now)
        else:   # between batches: an order that waited too long goes alone, now
            _assign_batch(queue, [j for j in queue if not j.batched
                                  and now - j.created >= policy.max_wait_s],
                          policy, index, movers, now)
        for mover in movers.values():
            if mover.legs:
                _advance(mover, index, now, dt, travel)
        if not arrivals and not queue and all(not m.legs for m in movers.values()):
            break
    ridden_km = sum(m.metres for m in movers.values()) * travel.route_factor / 1000
    return _summarise(policy.name, jobs, ridden_km, busy_s / (riders * hours * 3600))


def _assign(queue: deque[_Job], policy: Policy, index: RiderIndex,
            movers: dict[int, _Mover], now: float) -> None:
    """Offer queued orders oldest first; unplaced orders stay queued, in order."""
    unplaced: deque[_Job] = deque()
    # At saturation nobody is eligible: stop calling the policy until someone frees up.
    while queue and any(policy.eligible(m.rider) for m in movers.values()):
        job = queue.popleft()
        cand = policy.choose(job.order, index, now)
        if cand is None:
            unplaced.append(job)
            continue
        _give(movers[cand.rider_id], job, cand, now)
    unplaced.extend(queue)
    queue.clear()
    queue.extend(unplaced)


def _assign_batch(queue: deque[_Job], jobs: list[_Job], policy: Policy, index: RiderIndex,
                  movers: dict[int, _Mover], now: float) -> None:
    """Assign ``jobs`` (queued, oldest first) together; the rest stay queued, in order."""
    if not jobs or not any(policy.eligible(m.rider) for m in movers.values()):
        return
    for job in jobs:
        job.batched = True
    placed = set()
    for a in policy.assign([j.order for j in jobs], index, now).assignments:
        job = jobs[a.index]
        _give(movers[a.candidate.rider_id], job, a.candidate, now)
        placed.add(id(job))
    kept = [j for j in queue if id(j) not in placed]
    queue.clear()
    queue.extend(kept)


def _give(mover: _Mover, job: _Job, cand: Candidate, now: float) -> None:
    """Put the order's pickup and drop-off on the rider's route where ``cand`` says."""
    mover.legs.insert(cand.pickup_index, _Leg("pickup", job, job.order.merchant))
    mover.legs.insert(cand.dropoff_index, _Leg("dropoff", job, job.order.dropoff))
    mover.rider.load += 1
    _sync_route(mover)
    job.assigned = now


def _sync_route(mover: _Mover) -> None:
    """Mirror the rider's legs as the stops dispatch scores against."""
    mover.rider.route = [
        Stop(leg.point, ready=leg.job.order.ready_at) if leg.kind == "pickup"
        else Stop(leg.point, due=leg.job.order.promised_at) for leg in mover.legs]


def _advance(mover: _Mover, index: RiderIndex, t: float, dt: float,
             travel: TravelModel) -> None:
    """Move a rider through ``dt`` seconds: ride, wait for food, hand over."""
    rider, end = mover.rider, t + dt
    speed = travel.speed_mps / travel.route_factor   # straight-line progress per second
    pos, heading = rider.position, rider.heading
    while t < end and mover.legs:
        if mover.busy_until > t:
            t = min(mover.busy_until, end)
            continue
        leg = mover.legs[0]
        gap = distance(pos, leg.point)
        if gap > 0:
            heading = math.atan2(leg.point[1] - pos[1], leg.point[0] - pos[0])
        if gap > (end - t) * speed:
            f = (end - t) * speed / gap
            pos = (pos[0] + (leg.point[0] - pos[0]) * f, pos[1] + (leg.point[1] - pos[1]) * f)
            mover.metres += gap * f
            break
        pos, t = leg.point, t + gap / speed
        mover.metres += gap
        if leg.kind == "pickup":
            mover.busy_until = max(t, leg.job.order.ready_at) + travel.stop_s
        else:
            leg.job.delivered = t
            mover.busy_until = t + travel.stop_s
            rider.load -= 1
        mover.legs.pop(0)
        _sync_route(mover)
    index.move(rider.id, pos, heading)


def _summarise(name: str, jobs: list[_Job], ridden_km: float,
               utilisation: float) -> QualityResult:
    done = [j for j in jobs if not math.isnan(j.delivered)]
    times = np.array([j.delivered - j.created for j in done]) if done else np.zeros(1)
    waits = [j.assigned - j.created for j in jobs if not math.isnan(j.assigned)]
    late = sum(1 for j in done if j.delivered > j.order.promised_at)
    return QualityResult(
        policy=name, orders=len(jobs), delivered=len(done),
        mean_delivery_s=round(float(times.mean()), 3),
        p90_delivery_s=round(float(np.percentile(times, 90)), 3), late=late,
        undelivered=len(jobs) - len(done),
        mean_assign_wait_s=round(float(np.mean(waits)) if waits else 0.0, 3),
        km_per_order=round(ridden_km / max(len(done), 1), 3),
        utilisation=round(utilisation, 4))


def compare(seed: int = 1, policies: tuple[str, ...] = POLICIES,
            **kwargs) -> dict[str, QualityResult]:
    """Run :func:`simulate` with each policy on the same seeded city."""
    return {name: simulate(name, seed=seed, **kwargs) for name in policies}
