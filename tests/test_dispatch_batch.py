"""Batched assignment (workers/dispatch/batch.py): hand-built cities with known best
assignments, the rounds, exclusions, idle capacity, and the simulation's policies."""

from __future__ import annotations

import copy

from workers.dispatch import Order, Rider, RiderIndex, Stop, rank
from workers.dispatch.batch import BatchSettings, assign
from workers.dispatch.quality import POLICIES, simulate


def fleet(*riders: Rider) -> RiderIndex:
    index = RiderIndex(cell_size=500.0)
    for r in riders:
        index.upsert(r)
    return index


def order(oid: str, x: float, ready: float = 0.0) -> Order:
    return Order(oid, (x, 0.0), (x, 2000.0), ready_at=ready, promised_at=3000.0)


def given(batch) -> dict:
    return {a.index: a.candidate.rider_id for a in batch.assignments}


def test_the_joint_assignment_beats_taking_each_order_in_turn():
    # Rider 1 sits between the two merchants, a little nearer the first; rider 2 is
    # near the second only. In turn, order A takes rider 1 and B gets rider 2 from
    # afar... unless B is served by 1 and A by 2: the assignment minimises the sum.
    a, b = order("A", 0.0), order("B", 2000.0)
    r1, r2 = Rider(1, (900.0, 0.0)), Rider(2, (-3000.0, 0.0))
    index = fleet(r1, r2)
    greedy_a = rank(a, index, 0.0, limit=1)[0].rider_id
    assert greedy_a == 1                         # what taking A first would do
    result = assign([a, b], index, 0.0, settings=BatchSettings(rounds=1, stack=0))
    assert given(result) == {0: 2, 1: 1}
    joint = sum(x.candidate.score for x in result.assignments)
    in_turn = (rank(a, index, 0.0, limit=1)[0].score
               + rank(b, fleet(Rider(2, (-3000.0, 0.0))), 0.0, limit=1)[0].score)
    assert joint < in_turn


def test_a_second_round_gives_a_rider_a_second_order_on_its_new_route():
    a, b = order("A", 0.0, ready=600.0), order("B", 100.0, ready=600.0)
    index = fleet(Rider(1, (50.0, 0.0), capacity=2))
    before = copy.deepcopy(index[1])
    one = assign([a, b], index, 0.0, settings=BatchSettings(rounds=1))
    two = assign([a, b], index, 0.0, settings=BatchSettings(rounds=2))
    assert len(one.assignments) == 1 and len(two.assignments) == 2
    assert two.loaded[1].load == 2 and len(two.loaded[1].route) == 4
    assert index[1] == before                     # the index itself is not changed


def test_excluded_riders_and_riders_without_room_are_never_given_the_order():
    a = order("A", 0.0)
    near, full = Rider(1, (10.0, 0.0)), Rider(2, (20.0, 0.0), load=2, capacity=2,
                                                route=[(0.0, 500.0), (0.0, 900.0)])
    far = Rider(3, (2500.0, 0.0))
    result = assign([a], fleet(near, full, far), 0.0, exclude=[{1}])
    assert given(result) == {0: 3}
    assert [c.rider_id for c in result.ranked[0]] == [3]


def test_with_idle_riders_plentiful_an_order_goes_to_an_idle_rider_not_onto_a_busy_one():
    # The busy rider passes the merchant (a small detour); the idle one is 1.2 km away.
    a = order("A", 0.0, ready=600.0)
    busy = Rider(1, (-100.0, 0.0), route=[Stop((300.0, 0.0), due=2000.0)], load=1)
    idle = [Rider(i, (1200.0 + 10 * i, 0.0)) for i in range(2, 6)]
    index = fleet(busy, *idle)
    stacked = assign([a], index, 0.0, settings=BatchSettings(stack=0.0))
    spread = assign([a], index, 0.0)
    assert given(stacked) == {0: 1}
    assert given(spread) == {0: 2}


def test_every_policy_delivers_a_small_city_deterministically():
    for name in POLICIES:
        a = simulate(name, seed=5, hours=0.25, riders=60, orders_per_min=6.0)
        b = simulate(name, seed=5, hours=0.25, riders=60, orders_per_min=6.0)
        assert a == b, name
        assert a.delivered == a.orders and a.undelivered == 0, (name, a)
        assert 0 < a.utilisation <= 1, (name, a)
