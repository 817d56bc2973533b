"""Rank riders for an order: who should get the dispatch offer, best first.

Every candidate rider is scored by the cheapest way to fit the order into the route it
already has: the merchant pickup and the drop-off are inserted at every pair of places
(pickup before drop-off) and the insertion with the lowest cost wins. Costs are in
seconds-equivalents (see :class:`Weights`): time until the customer has the food,
lateness against the promise (for the new order and for orders the rider already
carries), delay to the orders the rider already carries, time the rider stands idle at
the merchant, time the food waits for the rider, and the riding the order adds to the
rider's route.

The whole candidate set is scored at once with numpy arrays of shape
(riders, pickup slot, drop-off slot), so a decision costs a few dozen array operations
rather than a Python loop per insertion. Nothing here does I/O or keeps global state;
the same inputs always give the same ranking (ties go to the smaller rider id).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .geo import Point, TravelModel
from .grid import GridIndex, Hits

RiderId = Hashable


class Stop(NamedTuple):
    """A stop on a rider's route.

    ``due``: promised time of a drop-off. Stops with a ``due`` are the customers already
    waiting: delaying them costs like delaying the new order, lateness past ``due``
    costs more. ``ready``: earliest time the stop can be served, e.g. when a pickup's
    food is ready (the rider waits there until then). Times are absolute seconds.
    """

    point: Point
    due: float = math.inf
    ready: float = -math.inf


@dataclass(slots=True)
class Rider:
    """A rider as dispatch sees it.

    ``route`` holds the remaining stops in visiting order, starting with the one the
    rider is heading to, as :class:`Stop` or bare points (a stop with no times). ``load`` counts orders held or
    assigned and not yet delivered. ``heading`` is radians counter-clockwise from east,
    used only for idle riders (turning around costs time).
    """

    id: RiderId
    position: Point
    route: list[Stop | Point] = field(default_factory=list)
    load: int = 0
    capacity: int = 2
    online: bool = True
    heading: float | None = None

    @property
    def available(self) -> bool:
        """Online and below capacity: may receive an offer."""
        return self.online and self.load < self.capacity

    @property
    def idle(self) -> bool:
        """Online with nothing in hand and nothing to do."""
        return self.online and self.load == 0 and not self.route


@dataclass(frozen=True, slots=True)
class Order:
    """An order to dispatch; times are absolute seconds on the same clock as ``now``."""

    id: Hashable
    merchant: Point
    dropoff: Point
    ready_at: float
    promised_at: float


@dataclass(frozen=True, slots=True)
class Weights:
    """Cost weights, in seconds-equivalent per unit.

    Lateness dominates by design: a late delivery is what customers and the business
    remember, so ``late`` and ``late_step`` outweigh a few minutes of anything else.
    """

    delivery: float = 1.0     # per second until the drop-off; per second of delay to
                              # drop-offs already on the route
    late: float = 4.0         # per second past a promise (new order or one in hand)
    late_step: float = 600.0  # once per order that ends up late at all
    idle: float = 0.25        # per second the rider waits at the merchant for the food
    food_wait: float = 0.5    # per second the ready food waits for the rider
    detour: float = 0.5       # per second of riding and handling added to the route
    load: float = 60.0        # per order already in hand (keeps slack, spreads work)
    turn: float = 30.0        # idle rider heading straight away from the merchant


DEFAULT_WEIGHTS = Weights()
DEFAULT_TRAVEL = TravelModel()


@dataclass(slots=True)
class Candidate:
    """One rider's best way to take the order, with the cost breakdown.

    Lower ``score`` is better. Times ``*_at`` are absolute seconds; ``*_s`` are
    durations. ``pickup_index`` and
    ``dropoff_index`` say where the stops go in the rider's route (see
    :func:`apply_insertion`).
    """

    rider_id: RiderId
    score: float
    distance_m: float        # straight line, rider to merchant
    to_merchant_s: float     # until the rider reaches the merchant, earlier stops included
    pickup_at: float
    wait_s: float            # rider idle at the merchant before ready_at
    food_wait_s: float       # food ready and waiting for the rider
    deliver_at: float
    late_s: float            # new order's drop-off past promised_at
    detour_s: float          # extra riding and handling time (waiting excluded)
    others_delay_s: float    # total delay pushed onto drop-offs already on the route
    others_late_s: float     # extra lateness past those drop-offs' promises
    load: int
    pickup_index: int
    dropoff_index: int


class RiderIndex:
    """Riders by id plus a grid index of their positions.

    Move riders through :meth:`move` (not by assigning ``rider.position``) so the grid
    stays in step.
    """

    def __init__(self, cell_size: float = 500.0) -> None:
        self.grid = GridIndex(cell_size)
        self._riders: dict[RiderId, Rider] = {}

    def __len__(self) -> int:
        return len(self._riders)

    def __iter__(self) -> Iterator[Rider]:
        return iter(self._riders.values())

    def __getitem__(self, rider_id: RiderId) -> Rider:
        return self._riders[rider_id]

    def upsert(self, rider: Rider) -> None:
        """Add or replace a rider."""
        self._riders[rider.id] = rider
        self.grid.insert(rider.id, rider.position)

    def move(self, rider_id: RiderId, position: Point, heading: float | None = None) -> None:
        """Update a rider's position (and heading when given)."""
        rider = self._riders[rider_id]
        rider.position = position
        if heading is not None:
            rider.heading = heading
        self.grid.move(rider_id, position)

    def remove(self, rider_id: RiderId) -> None:
        """Forget a rider (no error when unknown)."""
        self._riders.pop(rider_id, None)
        self.grid.remove(rider_id)

    def near(self, point: Point, k: int, radius: float, max_radius: float,
             idle_only: bool = False) -> tuple[list[Rider], Hits]:
        """Available riders (or idle ones) near ``point``; see :meth:`GridIndex.nearby`."""
        riders = self._riders
        if idle_only:
            hits = self.grid.nearby(point, k, radius, max_radius, lambda i: riders[i].idle)
        else:
            hits = self.grid.nearby(point, k, radius, max_radius, lambda i: riders[i].available)
        return [riders[i] for i in hits.keys], hits


def rank(order: Order, riders: RiderIndex, now: float,
         weights: Weights = DEFAULT_WEIGHTS, k: int = 8, *,
         travel: TravelModel = DEFAULT_TRAVEL, radius: float = 500.0,
         max_radius: float = 6000.0, max_candidates: int = 32,
         limit: int | None = None) -> list[Candidate]:
    """Available riders for ``order``, best first.

    Looks for riders around the merchant, widening from ``radius`` until at least ``k``
    are found or ``max_radius`` is reached, keeps the ``max_candidates`` nearest, scores
    them all and returns the best ``limit`` (all when None). Offline riders and riders
    at capacity are never returned.
    """
    found, hits = riders.near(order.merchant, k, radius, max_radius)
    found = nearest(found, hits, max_candidates)
    return score_riders(order, found, now, weights, travel=travel, limit=limit)


def nearest(found: list[Rider], hits: Hits, n: int) -> list[Rider]:
    """The ``n`` riders of a :meth:`RiderIndex.near` result nearest its centre; equal
    distances ordered by rider id."""
    if len(found) <= n:
        return found
    cut = np.partition(hits.dist, n - 1)[n - 1]
    keep = [found[i] for i in np.flatnonzero(hits.dist < cut)]
    tied = sorted((found[i] for i in np.flatnonzero(hits.dist == cut)), key=lambda r: r.id)
    return keep + tied[:n - len(keep)]


def greedy_nearest_idle(order: Order, riders: RiderIndex, now: float, *,
                        travel: TravelModel = DEFAULT_TRAVEL,
                        max_radius: float = 6000.0) -> Candidate | None:
    """Baseline: the nearest idle rider (no orders, no route), or None.

    The candidate carries the same breakdown as :func:`rank`'s so the two can be compared.
    """
    found, hits = riders.near(order.merchant, 1, riders.grid.cell_size, max_radius,
                              idle_only=True)
    if not found:
        return None
    dist = hits.dist.tolist()
    best = min(range(len(found)), key=lambda i: (dist[i], found[i].id))
    return score_riders(order, [found[best]], now, travel=travel)[0]


def apply_insertion(route: Sequence[Stop | Point], candidate: Candidate,
                    order: Order) -> list[Stop | Point]:
    """The rider's new route with the order's pickup and drop-off inserted."""
    new = list(route)
    new.insert(candidate.pickup_index, Stop(order.merchant, ready=order.ready_at))
    new.insert(candidate.dropoff_index, Stop(order.dropoff, order.promised_at))
    return new


class _Routes(NamedTuple):
    """Candidates' routes as padded arrays; node 0 is the rider's position.

    Padding nodes (beyond a rider's last stop) hold the rider's position and no
    deadline; every computation masks them out.
    """

    pts: np.ndarray     # (C, L, 2)
    due: np.ndarray     # (C, L); inf where there is no deadline or no stop
    ready: np.ndarray   # (C, L); -inf where the stop can be served on arrival
    m: np.ndarray       # (C,) number of real stops


def _routes(riders: Sequence[Rider]) -> _Routes:
    m = [len(r.route) for r in riders]
    length = 1 + max(m)
    pos = np.array([r.position for r in riders], dtype=float).reshape(-1, 2)
    pts = np.repeat(pos[:, None, :], length, axis=1)
    due = np.full((len(riders), length), math.inf)
    ready = np.full((len(riders), length), -math.inf)
    if length > 1:
        # One scatter for all route stops instead of a numpy call per rider.
        flat: list[int] = []
        xy: list[Point] = []
        dues: list[float] = []
        readies: list[float] = []
        for c, rider in enumerate(riders):
            if rider.route:
                base = c * length
                for n, s in enumerate(rider.route, base + 1):
                    flat.append(n)
                    if isinstance(s, Stop):
                        xy.append(s.point)
                        dues.append(s.due)
                        readies.append(s.ready)
                    else:
                        xy.append(s)
                        dues.append(math.inf)
                        readies.append(-math.inf)
        pts.reshape(-1, 2)[flat] = xy
        due.reshape(-1)[flat] = dues
        ready.reshape(-1)[flat] = readies
    return _Routes(pts, due, ready, np.array(m, dtype=np.int64))


class _Jobs(NamedTuple):
    """The order each candidate row is scored for (one order repeated, or many)."""

    merchant: np.ndarray   # (C, 2)
    dropoff: np.ndarray    # (C, 2)
    ready: np.ndarray      # (C,)
    promised: np.ndarray   # (C,)

    @staticmethod
    def of(orders: Sequence[Order]) -> _Jobs:
        return _Jobs(np.array([o.merchant for o in orders], dtype=float).reshape(-1, 2),
                     np.array([o.dropoff for o in orders], dtype=float).reshape(-1, 2),
                     np.array([o.ready_at for o in orders], dtype=float),
                     np.array([o.promised_at for o in orders], dtype=float))


def score_riders(order: Order, riders: Sequence[Rider], now: float,
                 weights: Weights = DEFAULT_WEIGHTS, *,
                 travel: TravelModel = DEFAULT_TRAVEL,
                 limit: int | None = None) -> list[Candidate]:
    """Score the given riders for ``order`` (no eligibility filter), best first."""
    if not riders:
        return []
    return _score(_Jobs.of([order] * len(riders)), list(riders), [len(riders)], now,
                  weights, travel, limit)[0]


#: Candidate rows scored in one set of array operations by :func:`score_many` (bounds
#: the (rows, L, L, L) temporaries of riders carrying orders).
CHUNK_ROWS = 4096


def score_many(orders: Sequence[Order], riders: Sequence[Sequence[Rider]], now: float,
               weights: Weights = DEFAULT_WEIGHTS, *,
               travel: TravelModel = DEFAULT_TRAVEL) -> list[list[Candidate]]:
    """:func:`score_riders` for many orders at once (``riders[i]`` for ``orders[i]``):
    the same candidates, best first per order, with the array work of all of them done
    together (a batch pays numpy's per-call overhead once per chunk, not per order)."""
    out: list[list[Candidate]] = []
    start = 0
    while start < len(orders):
        end, rows = start, 0
        while end < len(orders) and (end == start or rows + len(riders[end]) <= CHUNK_ROWS):
            rows += len(riders[end])
            end += 1
        sizes = [len(riders[i]) for i in range(start, end)]
        flat = [r for i in range(start, end) for r in riders[i]]
        jobs = _Jobs.of([orders[i] for i in range(start, end) for _ in riders[i]])
        out += _score(jobs, flat, sizes, now, weights, travel, None) if flat else \
            [[] for _ in sizes]
        start = end
    return out


def _score(jobs: _Jobs, riders: list[Rider], sizes: list[int], now: float, w: Weights,
           travel: TravelModel, limit: int | None) -> list[list[Candidate]]:
    """Score candidate rows (rider ``riders[c]`` for the order of row c), then split them
    into groups of ``sizes`` (one per order), each best first."""
    ev = _evaluate_by_length(jobs, riders, now, w, travel)
    loads = [r.load for r in riders]
    extra = w.load * np.array(loads, dtype=float)
    if w.turn:
        extra += _turn_penalty(jobs, riders, w.turn)
    scores = (ev.cost + extra).tolist()
    ids = [r.id for r in riders]
    # Whole columns to Python lists once (not a numpy scalar per field), then one
    # positional Candidate(...) per row, in the order of Candidate's fields.
    rows = list(zip(ids, scores, (ev.to_merchant / travel.seconds_per_metre).tolist(),
                    (ev.pickup_at - now).tolist(), *(a.tolist() for a in ev[4:]),
                    loads, ev.i.tolist(), (ev.j + 1).tolist()))
    out, at = [], 0
    for n in sizes:
        best = sorted(range(at, at + n), key=lambda c: (scores[c], ids[c]))
        if limit is not None:
            best = best[:limit]
        out.append([Candidate(*rows[c]) for c in best])
        at += n
    return out


#: Rows from which :func:`_evaluate_by_length` groups them (a batch's, not one order's).
GROUP_ROWS = 256


def _evaluate_by_length(jobs: _Jobs, riders: list[Rider], now: float, w: Weights,
                        travel: TravelModel) -> _Best:
    """:func:`_evaluate` over rows grouped by route length: an idle rider's row then
    costs (1, 1) insertion slots, not the (L, L, L) of the longest route among them."""
    if len(riders) < GROUP_ROWS:     # one order's candidates: grouping costs more calls
        return _evaluate(jobs, _routes(riders), now, w, travel)
    lengths = np.fromiter((len(r.route) for r in riders), dtype=np.int64, count=len(riders))
    kinds = np.unique(lengths)
    if len(kinds) == 1:
        return _evaluate(jobs, _routes(riders), now, w, travel)
    parts = []
    for n in kinds:
        rows = np.flatnonzero(lengths == n)
        sub = _Jobs(*(a[rows] for a in jobs))
        parts.append((rows, _evaluate(sub, _routes([riders[i] for i in rows]), now, w,
                                      travel)))
    merged = []
    for f in range(len(_Best._fields)):
        first = parts[0][1][f]
        out = np.empty(len(riders), dtype=first.dtype)
        for rows, ev in parts:
            out[rows] = ev[f]
        merged.append(out)
    return _Best(*merged)


class _Best(NamedTuple):
    """Per-candidate arrays at the cheapest insertion (order matters: see score_riders)."""

    cost: np.ndarray
    to_merchant: np.ndarray   # direct travel time, rider to merchant
    i: np.ndarray
    j: np.ndarray
    pickup_at: np.ndarray
    wait: np.ndarray
    food_wait: np.ndarray
    deliver_at: np.ndarray
    late: np.ndarray
    detour: np.ndarray
    others_delay: np.ndarray
    others_late: np.ndarray


@functools.lru_cache(maxsize=16)
def _masks(L: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Index helpers for routes of L nodes (read-only, shared between calls)."""
    node = np.arange(L)
    upper = node[:, None] <= node[None, :]                 # (i, j): pickup not after drop-off
    diag = np.eye(L, dtype=bool)
    upto = upper.T.astype(float)                           # (j, l): 1 where l <= j
    for a in (node, upper, diag, upto):
        a.flags.writeable = False
    return node, upper, diag, upto


def _schedule(leg: np.ndarray, ready: np.ndarray, now: float,
              stop_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrival, idle wait (before ``ready``) and departure at every node of the old routes.

    Without waiting the rider would leave node n at ``now + T[n]``. Each wait pushes
    everything after it, so the total push is a running maximum:
    ``dep[n] = T[n] + max(now, max over k <= n of (ready[k] + stop - T[k]))``.
    """
    step = leg + stop_s
    T = np.cumsum(step, axis=1) - step               # exclusive running sum
    push = ready + stop_s - T
    push[:, 0] = now                                 # node 0: the rider leaves now
    push = np.maximum.accumulate(push, axis=1)
    dep = T + push
    idle = np.zeros_like(dep)
    idle[:, 1:] = push[:, 1:] - push[:, :-1]
    arr = dep - idle - stop_s
    arr[:, 0] = now
    return arr, idle, dep


def _propagate(start: np.ndarray, idle: np.ndarray, steps: int) -> np.ndarray:
    """Delay on arrival at later nodes, for a delay ``start[..., s]`` entering node s+1.

    Each node the delay passes absorbs up to the time the rider used to wait there, so
    the delay left at node l is ``max(start - waits at nodes s+1 .. l-1, 0)``. Returns
    shape ``start.shape + (steps,)``: zero for l <= s.
    """
    C, L = idle.shape
    waited = np.cumsum(idle, axis=1)                               # waits at nodes 1..n
    before = np.zeros((C, steps))                                  # waits at nodes 1..l-1
    before[:, 1:] = waited[:, :steps - 1]
    absorbed = before[:, None, :] - waited[:, :, None]             # (C, s, l)
    if start.ndim == 3:
        absorbed = absorbed[:, None]
    after = np.arange(L)[:, None] < np.arange(steps)               # (s, l): l after s
    return np.where(after, np.maximum(start[..., None] - absorbed, 0.0), 0.0)


def _evaluate(jobs: _Jobs, routes: _Routes, now: float, w: Weights,
              travel: TravelModel) -> _Best:
    """Cost of every (pickup slot i, drop-off slot j) per candidate; keep the cheapest.

    Slot i means "right after route node i" (node 0 is the rider's position). An
    insertion delays the stops after it; the delay carries along the route, minus any
    time the rider used to spend waiting for food at a stop on the way.
    """
    pts, due, ready, m = routes
    C, L = due.shape
    node, upper, diag, upto = _masks(L)
    stop_s = travel.stop_s
    has_next = node[None, :] < m[:, None]                                  # (C, L)
    leg = np.zeros((C, L))
    leg[:, :-1] = travel.times(pts[:, :-1], pts[:, 1:])
    leg *= has_next
    arr, idle, dep = _schedule(leg, ready, now, stop_s)
    # Times to merchant and drop-off from every node, and from the node after it.
    ends = np.stack([jobs.merchant, jobs.dropoff], axis=1)                 # (C, 2, 2)
    to_md = travel.times(pts[:, :, None, :], ends[:, None, :, :])
    nxt = np.zeros((C, L, 2))
    nxt[:, :-1] = to_md[:, 1:]
    nxt *= has_next[:, :, None]
    t_m, t_d = to_md[..., 0], to_md[..., 1]
    t_m_next, t_d_next = nxt[..., 0], nxt[..., 1]
    t_md = travel.times(jobs.merchant, jobs.dropoff)[:, None]              # (C, 1)
    ready_at = jobs.ready[:, None]
    base = dep + leg                                 # old arrival at node i+1

    # Pickup right after node i; the delay it causes enters node i+1.
    pickup_at = dep + t_m
    wait = np.maximum(ready_at - pickup_at, 0.0)
    food_wait = np.maximum(pickup_at - ready_at, 0.0)
    leave_m = np.maximum(pickup_at, ready_at) + stop_s
    first = _propagate(leave_m + t_m_next - base, idle, L)                 # (C, i, l)

    # Drop-off right after node j (C, i, j); the diagonal is "straight after pickup".
    leave_j = dep[:, None, :] + np.maximum(first - idle[:, None, :], 0.0)
    deliver_at = np.where(diag, (leave_m + t_md)[:, :, None], leave_j + t_d[:, None, :])
    second = _propagate(deliver_at + (stop_s + t_d_next - base)[:, None, :], idle, L)
    # Extra riding and handling; waiting is priced by ``idle``, not as detour.
    detour = 2 * stop_s + np.where(
        diag, (t_m + t_md + t_d_next - leg)[:, :, None],
        (t_m + t_m_next - leg)[:, :, None] + (t_d + t_d_next - leg)[:, None, :])

    late = np.maximum(deliver_at - jobs.promised[:, None, None], 0.0)
    cost = (w.delivery * (deliver_at - now) + w.late * late + w.late_step * (late > 0)
            + (w.idle * wait + w.food_wait * food_wait)[:, :, None] + w.detour * detour)
    others_delay = others_late = np.zeros((C, L, L))
    if np.isfinite(due).any():
        delay = first[:, :, None, :] * upto + second[..., :L]             # (C, i, j, l)
        others_delay, others_late, newly_late = _in_hand(arr, due, delay)
        # Customers already waiting count as much as the new one.
        cost += w.delivery * others_delay + w.late * others_late + w.late_step * newly_late
    valid = upper[None] & (node[None, None, :] <= m[:, None, None])
    cost[~valid] = np.inf

    # First minimum in (i, j) order: ties prefer the earliest slots, deterministically.
    flat = cost.reshape(C, L * L).argmin(axis=1)
    i, j = np.divmod(flat, L)
    at = flat + np.arange(C) * (L * L)               # flat index into (C, L, L)
    at_i = i + np.arange(C) * L                      # flat index into (C, L)
    return _Best(cost.ravel()[at], t_m[:, 0], i, j, pickup_at.ravel()[at_i],
                 wait.ravel()[at_i], food_wait.ravel()[at_i], deliver_at.ravel()[at],
                 late.ravel()[at], detour.ravel()[at], others_delay.ravel()[at],
                 others_late.ravel()[at])


def _in_hand(arr: np.ndarray, due: np.ndarray,
             delay: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For drop-offs already on the routes (stops with a ``due``), per (i, j): total
    delay, extra lateness and how many become late."""
    promised = np.isfinite(due)[:, None, None, :]
    slack = (due - arr)[:, None, None, :]           # inf where there is no deadline
    before = np.maximum(-slack, 0.0)
    after = np.maximum(delay - slack, 0.0)
    total_delay = np.where(promised, delay, 0.0).sum(axis=3)
    extra = (after - before).sum(axis=3)
    newly = ((after > 0) & (before == 0)).sum(axis=3)
    return total_delay, extra, newly


def _turn_penalty(jobs: _Jobs, riders: Sequence[Rider], turn: float) -> np.ndarray:
    """Cost for idle riders pointing away from the merchant (0 facing it, ``turn`` opposite)."""
    heading = np.array([math.nan if r.heading is None or r.route else r.heading
                        for r in riders], dtype=float)
    to_m = jobs.merchant - np.array([r.position for r in riders], dtype=float).reshape(-1, 2)
    d = np.sqrt(to_m[:, 0] * to_m[:, 0] + to_m[:, 1] * to_m[:, 1])
    use = ~np.isnan(heading) & (d > 0)
    cos = np.zeros(len(riders))
    h = heading[use]
    cos[use] = (to_m[use, 0] * np.cos(h) + to_m[use, 1] * np.sin(h)) / d[use]
    return np.where(use, turn * (1.0 - cos) / 2.0, 0.0)
