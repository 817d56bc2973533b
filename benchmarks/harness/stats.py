"""Figures from raw samples and medians over a figure's runs."""

from __future__ import annotations

import array
import os
import statistics
from typing import Any, Callable, Hashable, Iterable

#: Percentiles every latency figure reports: (name, quantile).
QUANTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999))

#: Nanoseconds per unit of a reported latency.
NS_PER = {"us": 1e3, "ms": 1e6}


def percentiles(values: Iterable[int], unit: str, count_key: str) -> dict:
    """p50/p90/p99/p99.9/max of nanosecond ``values`` in ``unit`` ("us" or "ms"), keyed
    ``p50_us`` etc., plus how many under ``count_key``; {} without values."""
    s = sorted(values)
    if not s:
        return {}
    n = len(s)
    scale = NS_PER[unit]
    out = {f"{name}_{unit}": s[min(n - 1, int(q * n))] / scale for name, q in QUANTILES}
    out[f"max_{unit}"] = s[-1] / scale
    out[count_key] = n
    return out


def read_array(path: str, code: str) -> array.array:
    """The samples a driver wrote to ``path`` (array type ``code``); empty if none."""
    arr = array.array(code)
    if os.path.exists(path):
        with open(path, "rb") as fh:
            arr.frombytes(fh.read())
    return arr


def lookup(row: dict, path: str) -> Any:
    """``row[a][b]`` for the path "a.b"; None where anything along it is missing."""
    v: Any = row
    for part in path.split("."):
        if not isinstance(v, dict) or part not in v:
            return None
        v = v[part]
    return v


def median_of(rows: list[dict], path: str) -> Any:
    """Median of a figure (a :func:`lookup` path) over the rows that have it."""
    vals = [v for v in (lookup(r, path) for r in rows) if v is not None]
    return statistics.median(vals) if vals else None


def group_rows(rows: list[dict], key: Callable[[dict], Hashable]) -> dict:
    """Rows grouped by ``key(row)``, groups in order of first appearance."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return groups


def runs_used(rows: list[dict], quiet_only: bool = True) -> tuple[list, list, list]:
    """(runs that did not fail, the quiet ones among them, the ones a median uses).

    A figure's median uses its quiet runs while it has any (with ``quiet_only``), so
    that one trial disturbed by other work on the machine does not move it."""
    ok = [r for r in rows if "error" not in r]
    quiet = [r for r in ok if not r.get("noisy")]
    return ok, quiet, (quiet if quiet_only and quiet else ok)
