"""Uniform-grid spatial index of moving points (riders).

The plane is cut into square cells of ``cell_size`` metres. Each cell holds a dict of
key -> (x, y), so insert, move and remove are O(1), and a radius query touches only the
cells around the centre instead of every rider in the city.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass

import numpy as np

from .geo import Point

Key = Hashable
Cell = tuple[int, int]


@dataclass(slots=True)
class Hits:
    """Result of a radius query: keys with positions and distances from the centre.

    ``radius`` is the radius that was finally searched (all points within it that pass
    the filter are in the result).
    """

    keys: list[Key]
    xy: np.ndarray      # shape (n, 2)
    dist: np.ndarray    # shape (n,)
    radius: float

    def __len__(self) -> int:
        return len(self.keys)


class GridIndex:
    """Keys with positions in a uniform grid of square cells."""

    def __init__(self, cell_size: float = 500.0) -> None:
        if cell_size <= 0:
            raise ValueError("cell_size must be positive")
        self.cell_size = float(cell_size)
        self._cells: dict[Cell, dict[Key, Point]] = {}
        self._where: dict[Key, Cell] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: Key) -> bool:
        return key in self._where

    def cell_of(self, p: Point) -> Cell:
        """The cell containing point ``p``."""
        return (math.floor(p[0] / self.cell_size), math.floor(p[1] / self.cell_size))

    def position(self, key: Key) -> Point:
        """Current position of ``key`` (KeyError when absent)."""
        return self._cells[self._where[key]][key]

    def insert(self, key: Key, p: Point) -> None:
        """Add ``key`` at ``p``, or move it there if already present."""
        if key in self._where:
            self.move(key, p)
            return
        cell = self.cell_of(p)
        self._cells.setdefault(cell, {})[key] = (float(p[0]), float(p[1]))
        self._where[key] = cell

    def move(self, key: Key, p: Point) -> None:
        """Move an existing ``key`` to ``p`` (KeyError when absent)."""
        old = self._where[key]
        new = self.cell_of(p)
        p = (float(p[0]), float(p[1]))
        if new == old:
            self._cells[old][key] = p
            return
        self._drop(old, key)
        self._cells.setdefault(new, {})[key] = p
        self._where[key] = new

    def remove(self, key: Key) -> None:
        """Remove ``key`` if present."""
        cell = self._where.pop(key, None)
        if cell is not None:
            self._drop(cell, key)

    def _drop(self, cell: Cell, key: Key) -> None:
        members = self._cells[cell]
        del members[key]
        if not members:
            # Empty cells are removed so memory follows riders, not the city's area.
            del self._cells[cell]

    def _ring(self, cx: int, cy: int, n: int) -> Iterator[dict[Key, Point]]:
        """Occupied cells at Chebyshev distance exactly ``n`` from ``(cx, cy)``."""
        cells = self._cells
        if n == 0:
            members = cells.get((cx, cy))
            if members:
                yield members
            return
        for dx in range(-n, n + 1):
            for cell in ((cx + dx, cy - n), (cx + dx, cy + n)):
                members = cells.get(cell)
                if members:
                    yield members
        for dy in range(-n + 1, n):
            for cell in ((cx - n, cy + dy), (cx + n, cy + dy)):
                members = cells.get(cell)
                if members:
                    yield members

    def within(self, center: Point, radius: float,
               accept: Callable[[Key], bool] | None = None) -> Hits:
        """Every key within ``radius`` metres of ``center`` that ``accept`` allows."""
        return self.nearby(center, k=0, radius=radius, max_radius=radius, accept=accept)

    def nearby(self, center: Point, k: int, radius: float, max_radius: float,
               accept: Callable[[Key], bool] | None = None) -> Hits:
        """Keys within a radius that grows from ``radius`` until it holds ``k`` keys.

        The radius grows by one cell per step and stops at ``max_radius``; the result is
        every accepted key within the final radius, which may be more than ``k``.
        ``accept`` is only asked about keys inside the radius, at most once each.
        """
        cx, cy = self.cell_of(center)
        c = np.array(center, dtype=float)
        keys: list[Key] = []
        xy = np.empty((0, 2))
        dist = np.empty(0)
        ok = np.empty(0, dtype=np.int8)      # 0: not asked yet, 1: accepted, 2: refused
        done = -1
        r = min(radius, max_radius)
        while True:
            # Rings 0..n cover the whole disc of radius n * cell_size around the centre.
            need = math.ceil(r / self.cell_size)
            new_keys, new_pts = self._gather(cx, cy, done + 1, need)
            done = need
            if new_keys:
                keys.extend(new_keys)
                new_xy = np.array(new_pts, dtype=float)
                d = new_xy - c
                xy = np.concatenate([xy, new_xy])
                dist = np.concatenate([dist, np.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1])])
                ok = np.concatenate([ok, np.zeros(len(new_keys), dtype=np.int8)])
            inside = dist <= r
            if accept is not None:
                for i in np.flatnonzero(inside & (ok == 0)).tolist():
                    ok[i] = 1 if accept(keys[i]) else 2
                inside &= ok == 1
            if r >= max_radius or np.count_nonzero(inside) >= k:
                idx = np.flatnonzero(inside)
                return Hits([keys[i] for i in idx.tolist()], xy[idx], dist[idx], r)
            r = min(r + self.cell_size, max_radius)

    def _gather(self, cx: int, cy: int, first: int, last: int) -> tuple[list[Key], list[Point]]:
        """Keys and positions in rings ``first..last`` around cell ``(cx, cy)``."""
        keys: list[Key] = []
        pts: list[Point] = []
        for n in range(first, last + 1):
            for members in self._ring(cx, cy, n):
                keys.extend(members)           # C-level copies: no Python loop per rider
                pts.extend(members.values())
        return keys, pts
