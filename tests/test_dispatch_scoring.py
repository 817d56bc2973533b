"""Dispatch scoring: hand-built scenarios with known answers, plus reference checks.

Travel model throughout: 4.5 m/s, route factor 1.3 (0.2889 s per straight-line metre),
60 s at each stop.
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple

import numpy as np
import pytest

from workers.dispatch import (DEFAULT_TRAVEL, DEFAULT_WEIGHTS, GridIndex, Order, Projection,
                              Rider, RiderIndex, Stop, apply_insertion, greedy_nearest_idle,
                              rank, score_riders)

SPM = DEFAULT_TRAVEL.seconds_per_metre


def fleet(*riders: Rider) -> RiderIndex:
    index = RiderIndex(cell_size=500.0)
    for r in riders:
        index.upsert(r)
    return index


def ids(cands) -> list:
    return [c.rider_id for c in cands]


# --- hand-built scenarios ---------------------------------------------------------

def test_idle_farther_rider_beats_closer_loaded_rider_that_would_be_late():
    # Rider 1 is 300 m from the merchant but carries an order due at t=1000 whose
    # drop-off is 3 km the other way (arrival ~867 s): whatever it does, one order is
    # late. Rider 2 is idle 1.5 km away and delivers at ~1071 s, well before 1800.
    order = Order("o", merchant=(0.0, 0.0), dropoff=(2000.0, 0.0), ready_at=300.0,
                  promised_at=1800.0)
    loaded = Rider(1, (-300.0, 0.0), route=[Stop((-3300.0, 0.0), due=1000.0)], load=1,
                   capacity=2)
    idle = Rider(2, (1500.0, 0.0))
    ranked = rank(order, fleet(loaded, idle), now=0.0)
    assert ids(ranked) == [2, 1]
    best, worse = ranked
    assert best.late_s == 0 and best.others_late_s == 0
    assert worse.late_s > 0 or worse.others_late_s > 0
    assert best.deliver_at == pytest.approx(1500 * SPM + 60 + 2000 * SPM)


def test_riders_at_capacity_and_offline_riders_are_excluded():
    order = Order("o", (0.0, 0.0), (2000.0, 0.0), ready_at=0.0, promised_at=1800.0)
    full = Rider(1, (10.0, 0.0), route=[(100.0, 0.0), (200.0, 0.0)], load=2, capacity=2)
    offline = Rider(2, (0.0, 10.0), online=False)
    far = Rider(3, (2500.0, 0.0))
    index = fleet(full, offline, far)
    assert ids(rank(order, index, now=0.0)) == [3]
    assert greedy_nearest_idle(order, index, now=0.0).rider_id == 3
    index[3].online = False
    assert rank(order, index, now=0.0) == []
    assert greedy_nearest_idle(order, index, now=0.0) is None


def test_rider_already_passing_merchant_and_dropoff_beats_slightly_closer_idle_rider():
    # Rider 1 rides (-600,0) -> (2500,0); the merchant (0,0) and drop-off (2000,0) lie on
    # its way, so taking the order only adds two stops (120 s, also the delay to the order
    # it carries). Rider 2 is idle and 200 m closer, delivers ~58 s sooner, but the whole
    # trip is extra work: cost ~1138 vs ~1218.
    order = Order("o", (0.0, 0.0), (2000.0, 0.0), ready_at=0.0, promised_at=1800.0)
    on_route = Rider(1, (-600.0, 0.0), route=[Stop((2500.0, 0.0), due=5000.0)], load=1,
                     capacity=2)
    idle = Rider(2, (-400.0, 0.0))
    ranked = rank(order, fleet(on_route, idle), now=0.0)
    assert ids(ranked) == [1, 2]
    best = ranked[0]
    assert (best.pickup_index, best.dropoff_index) == (0, 1)
    assert best.detour_s == pytest.approx(2 * DEFAULT_TRAVEL.stop_s)
    assert best.others_delay_s == pytest.approx(2 * DEFAULT_TRAVEL.stop_s)
    assert ranked[1].score - best.score > 50
    # The baseline only looks at idle riders.
    assert greedy_nearest_idle(order, fleet(on_route, idle), now=0.0).rider_id == 2


def test_waiting_for_food_is_penalised_less_than_being_late():
    # Food is ready at 1200 s. Rider 1 arrives after 58 s and waits ~19 min but delivers
    # on time (2415 < 2600); rider 2 arrives after the food is ready and is late (~2659).
    order = Order("o", (0.0, 0.0), (4000.0, 0.0), ready_at=1200.0, promised_at=2600.0)
    early = Rider(1, (-200.0, 0.0))
    late = Rider(2, (-5000.0, 0.0))
    first, second = rank(order, fleet(early, late), now=0.0)
    assert first.rider_id == 1
    assert first.wait_s > 1100 and first.late_s == 0
    assert second.late_s > 0 and second.food_wait_s > 0


def test_when_both_are_on_time_waiting_nearby_beats_riding_across_town():
    # Food is ready at 1200 s and both deliver at ready + 60 s + trip. Rider 1 is 200 m
    # away and would wait ~19 min (0.25/s); rider 2 rides 4 km to arrive just in time
    # (riding costs 0.5/s): waiting nearby is cheaper than riding across town.
    order = Order("o", (0.0, 0.0), (2000.0, 0.0), ready_at=1200.0, promised_at=2600.0)
    near = Rider(1, (0.0, 200.0))
    just_in_time = Rider(2, (0.0, -4000.0))
    first, second = rank(order, fleet(near, just_in_time), now=0.0)
    assert (first.rider_id, second.rider_id) == (1, 2)
    assert first.deliver_at == pytest.approx(second.deliver_at)
    assert first.wait_s > 1100 and second.wait_s < 60
    assert first.detour_s < second.detour_s


def test_idle_rider_heading_towards_the_merchant_wins_a_tie():
    order = Order("o", (0.0, 0.0), (1000.0, 1000.0), ready_at=0.0, promised_at=3600.0)
    away = Rider(1, (-1000.0, 0.0), heading=math.pi)     # facing west, merchant is east
    towards = Rider(2, (1000.0, 0.0), heading=math.pi)   # facing west, towards merchant
    assert ids(rank(order, fleet(away, towards), now=0.0)) == [2, 1]


def test_equal_scores_tie_break_by_rider_id():
    order = Order("o", (0.0, 0.0), (1000.0, 0.0), ready_at=0.0, promised_at=3600.0)
    riders = [Rider(i, p) for i, p in [(7, (0.0, 500.0)), (3, (0.0, -500.0)),
                                       (5, (-500.0, 0.0))]]
    ranked = rank(order, fleet(*riders), now=0.0)
    assert ids(ranked) == [3, 5, 7]
    assert len({c.score for c in ranked}) == 1


def test_existing_deadline_keeps_new_stops_after_an_urgent_dropoff():
    # The rider must reach (1000,0) by t=300 (~349 s with no detour is already close);
    # the new order's stops go after it even though the merchant is nearer.
    order = Order("o", (0.0, 500.0), (0.0, 1000.0), ready_at=0.0, promised_at=3600.0)
    rider = Rider(1, (0.0, 0.0), route=[Stop((1000.0, 0.0), due=350.0)], load=1)
    (c,) = rank(order, fleet(rider), now=0.0)
    assert c.pickup_index == 1 and c.others_late_s == 0
    route = apply_insertion(rider.route, c, order)
    assert route == [Stop((1000.0, 0.0), 350.0), Stop((0.0, 500.0), ready=0.0),
                     Stop((0.0, 1000.0), 3600.0)]


# --- reference checks -------------------------------------------------------------

class Walk(NamedTuple):
    pickup_at: float | None
    deliver_at: float | None
    busy: float              # riding and handling, waiting excluded
    late: list[float]        # per old drop-off (a stop with a due time)
    arrive: list[float]


def _walk(rider: Rider, stops, order: Order, now: float) -> Walk:
    """Plain-Python timing of a route, stop by stop."""
    t, pos, busy = now, rider.position, 0.0
    pickup_at = deliver_at = None
    late, arrive = [], []
    for kind, p, due, ready in stops:
        ride = DEFAULT_TRAVEL.time(pos, p)
        t += ride
        busy += ride + DEFAULT_TRAVEL.stop_s
        pos = p
        if kind == "pickup":
            pickup_at = t
        elif kind == "dropoff":
            deliver_at = t
        elif due < math.inf:
            late.append(max(t - due, 0.0))
            arrive.append(t)
        t = max(t, ready) + DEFAULT_TRAVEL.stop_s
    return Walk(pickup_at, deliver_at, busy, late, arrive)


def _with_order(rider: Rider, order: Order, i: int, j: int) -> list:
    stops = [("old", *s) for s in rider.route]
    stops.insert(i, ("pickup", order.merchant, math.inf, order.ready_at))
    stops.insert(j, ("dropoff", order.dropoff, math.inf, -math.inf))
    return stops


def _reference_score(order: Order, rider: Rider, now: float) -> float:
    """Best cost over every insertion, in plain Python."""
    w = DEFAULT_WEIGHTS
    old = _walk(rider, [("old", *s) for s in rider.route], order, now)
    best = math.inf
    for i in range(len(rider.route) + 1):
        for j in range(i, len(rider.route) + 1):
            new = _walk(rider, _with_order(rider, order, i, j + 1), order, now)
            late = max(new.deliver_at - order.promised_at, 0.0)
            cost = (w.delivery * (new.deliver_at - now) + w.late * late
                    + w.late_step * (late > 0)
                    + w.idle * max(order.ready_at - new.pickup_at, 0.0)
                    + w.food_wait * max(new.pickup_at - order.ready_at, 0.0)
                    + w.detour * (new.busy - old.busy)
                    + w.delivery * (sum(new.arrive) - sum(old.arrive))
                    + w.late * (sum(new.late) - sum(old.late))
                    + w.late_step * sum(a > 0 and b == 0 for a, b in zip(new.late, old.late)))
            best = min(best, cost)
    return best + w.load * rider.load


def _random_rider(rng: random.Random, rid: int) -> Rider:
    n = rng.randrange(0, 5)
    route = [Stop((rng.uniform(0, 4000), rng.uniform(0, 4000)),
                  due=rng.choice([math.inf, rng.uniform(200, 2500)]),
                  ready=rng.choice([-math.inf, -math.inf, rng.uniform(0, 1500)]))
             for _ in range(n)]
    return Rider(rid, (rng.uniform(0, 4000), rng.uniform(0, 4000)), route=route,
                 load=(n + 1) // 2, capacity=3)


def test_vectorised_insertion_matches_plain_python_enumeration():
    rng = random.Random(7)
    for _ in range(40):
        riders = [_random_rider(rng, rid) for rid in range(12)]
        order = Order("o", (rng.uniform(0, 4000), rng.uniform(0, 4000)),
                      (rng.uniform(0, 4000), rng.uniform(0, 4000)),
                      ready_at=rng.uniform(0, 900), promised_at=rng.uniform(900, 3000))
        for c in score_riders(order, riders, now=0.0):
            rider = riders[c.rider_id]
            assert c.score == pytest.approx(_reference_score(order, rider, 0.0),
                                            rel=1e-9, abs=1e-6)
            old = _walk(rider, [("old", *s) for s in rider.route], order, 0.0)
            new = _walk(rider, _with_order(rider, order, c.pickup_index, c.dropoff_index),
                        order, 0.0)
            assert c.pickup_at == pytest.approx(new.pickup_at)
            assert c.deliver_at == pytest.approx(new.deliver_at)
            assert c.detour_s == pytest.approx(new.busy - old.busy)
            assert c.others_delay_s == pytest.approx(sum(new.arrive) - sum(old.arrive))


def test_grid_queries_match_brute_force():
    rng = np.random.default_rng(1234)
    grid = GridIndex(cell_size=500.0)
    pts = {i: tuple(p) for i, p in enumerate(rng.uniform(-7500, 7500, size=(3000, 2)))}
    for i, p in pts.items():
        grid.insert(i, p)
    for i in range(0, 3000, 3):                        # move a third, remove a tenth
        pts[i] = tuple(rng.uniform(-7500, 7500, size=2))
        grid.move(i, pts[i])
    for i in range(0, 3000, 10):
        grid.remove(i)
        del pts[i]
    assert len(grid) == len(pts)
    for _ in range(200):
        center = tuple(rng.uniform(-8000, 8000, size=2))
        r = float(rng.uniform(0, 3000))
        brute = {i for i, p in pts.items() if math.dist(p, center) <= r}
        assert set(grid.within(center, r).keys) == brute
        k = int(rng.integers(1, 60))
        hits = grid.nearby(center, k, radius=300.0, max_radius=4000.0,
                           accept=lambda i: i % 2 == 0)
        brute = {i for i, p in pts.items() if i % 2 == 0 and math.dist(p, center) <= hits.radius}
        assert set(hits.keys) == brute
        assert len(hits) >= k or hits.radius == 4000.0
        assert np.allclose(hits.dist, [math.dist(pts[i], center) for i in hits.keys])


def test_ranking_is_deterministic_and_independent_of_insertion_order():
    rng = random.Random(99)
    riders = [_random_rider(rng, rid) for rid in range(2000)]
    for r in riders:
        r.position = (r.position[0] * 2, r.position[1] * 2)
    orders = [Order(n, (rng.uniform(0, 8000), rng.uniform(0, 8000)),
                    (rng.uniform(0, 8000), rng.uniform(0, 8000)), rng.uniform(0, 600),
                    rng.uniform(1200, 3000)) for n in range(50)]
    a = fleet(*riders)
    b = fleet(*reversed(riders))
    first = [rank(o, a, now=0.0) for o in orders]
    assert first == [rank(o, b, now=0.0) for o in orders]
    assert first == [rank(o, a, now=0.0) for o in orders]
    assert all(c.load < 3 for cands in first for c in cands)


def test_rank_widens_until_k_candidates():
    riders = [Rider(i, (i * 400.0, 0.0)) for i in range(1, 11)]
    order = Order("o", (0.0, 0.0), (0.0, 1000.0), ready_at=0.0, promised_at=3600.0)
    index = fleet(*riders)
    assert len(rank(order, index, 0.0, k=2, radius=500.0)) == 2
    assert len(rank(order, index, 0.0, k=5, radius=500.0)) >= 5
    assert len(rank(order, index, 0.0, k=50, radius=500.0, max_radius=2000.0)) == 5
    assert len(rank(order, index, 0.0, k=50, radius=500.0, max_candidates=3)) == 3


def test_projection_round_trip_and_scale():
    proj = Projection(lat0=31.23, lon0=121.47)
    x, y = proj.to_plane(31.24, 121.48)
    assert y == pytest.approx(1111.95, rel=1e-3)
    assert x == pytest.approx(1111.95 * math.cos(math.radians(31.23)), rel=1e-3)
    lat, lon = proj.to_latlon((x, y))
    assert (lat, lon) == (pytest.approx(31.24), pytest.approx(121.48))


def test_quality_simulation_is_deterministic():
    from workers.dispatch.quality import simulate
    a = simulate("rank", seed=3, hours=0.25, riders=60, orders_per_min=4.0)
    b = simulate("rank", seed=3, hours=0.25, riders=60, orders_per_min=4.0)
    assert a == b and a.delivered > 0
