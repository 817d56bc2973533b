"""Order history retention: expired events go in bounded steps, and a step costs the
same on a large table as on a small one (it never scans the table)."""

from __future__ import annotations

import time

from router import history
from router.history import History


def fill(h: History, n: int, ts_us: int, first: int = 0) -> None:
    rows = [(f"order:{first + i}", ts_us, "accepted", first + i, 1, "accepted", "none",
             "order", "svc", "user:1", "order.created", "", b"{}") for i in range(n)]
    h.db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)


def prune_steps(h: History) -> int:
    """SQLite VM instructions (in thousands) one prune step executes."""
    ticks = [0]

    def tick() -> int:
        ticks[0] += 1
        return 0

    h.db.set_progress_handler(tick, 1000)
    h._last_prune = 0.0
    h._maybe_prune()
    h.db.set_progress_handler(None, 0)
    return ticks[0]


def test_expired_events_go_in_bounded_steps_and_fresh_ones_stay(tmp_path, monkeypatch):
    monkeypatch.setattr(history, "PRUNE_ROWS", 1000)
    h = History(tmp_path / "h.db", retain_days=1.0)
    now_us = int(time.time() * 1e6)
    fill(h, 2500, now_us - 3 * 86400 * 10**6)           # three days old: expired
    fill(h, 500, now_us, first=10_000)                  # fresh
    for left in (1500, 500, 0, 0):
        h._last_prune = 0.0
        h._maybe_prune()
        expired = h.db.execute("SELECT count(*) FROM events WHERE ts_us < ?",
                               (now_us - 86400 * 10**6,)).fetchone()[0]
        assert expired == left
    assert h.db.execute("SELECT count(*) FROM events").fetchone()[0] == 500
    assert h.pruned == 2500
    h.close()


def test_a_prune_step_with_nothing_expired_does_not_grow_with_the_table(tmp_path):
    h = History(tmp_path / "h.db", retain_days=30.0)
    now_us = int(time.time() * 1e6)
    fill(h, 5_000, now_us)
    small = prune_steps(h)
    fill(h, 100_000, now_us, first=5_000)
    large = prune_steps(h)
    # a scan of 105,000 rows is hundreds of thousands of instructions; the oldest-row
    # check is a handful, whatever the size
    assert large <= small + 1 and large < 5, (small, large)
    h.close()
