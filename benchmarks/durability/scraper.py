"""GET /metrics on a schedule while a trial runs, and what the scrapes measured."""

from __future__ import annotations

import statistics
import threading
import time
import urllib.request


class Scraper(threading.Thread):
    """GET /metrics every ``interval`` s (fixed schedule; a late scrape is not repeated)."""

    def __init__(self, port: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.interval = interval
        self.samples: list[tuple[int, float, int, int]] = []  # (start ns, s, status, bytes)
        self.errors: list[str] = []
        self._stop_ev = threading.Event()

    def run(self) -> None:
        """Scrape until stopped (the thread's body)."""
        t0 = time.monotonic()
        k = 0
        while not self._stop_ev.is_set():
            start = time.monotonic_ns()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:
                    body = resp.read()
                    status = resp.status
            except Exception as exc:  # noqa: BLE001 - record and keep scraping
                body, status = b"", 0
                if len(self.errors) < 20:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
            self.samples.append((start, (time.monotonic_ns() - start) / 1e9, status, len(body)))
            k += 1
            nxt = t0 + k * self.interval
            now = time.monotonic()
            if nxt < now:  # late: skip to the next slot
                k = int((now - t0) / self.interval) + 1
                nxt = t0 + k * self.interval
            self._stop_ev.wait(nxt - now)

    def stop(self) -> None:
        """End the schedule and wait for the thread."""
        self._stop_ev.set()
        self.join(10)

    def between(self, t0_ns: int, t1_ns: int) -> list[tuple[int, float, int, int]]:
        """The scrapes that started between two monotonic times."""
        return [s for s in self.samples if t0_ns <= s[0] <= t1_ns]


def journal_metrics(port: int) -> dict:
    """Group-commit figures from one final scrape (the snapshot is at most 1 s old)."""
    time.sleep(1.2)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except Exception as exc:  # noqa: BLE001
        return {"error": str(exc)}
    vals = {}
    for line in text.splitlines():
        for name in ("router_journal_commits_total", "router_journal_commit_seconds_sum",
                     "router_journal_commit_seconds_count"):
            if line.startswith(name + " "):
                vals[name] = float(line.split()[1])
        if line.startswith('router_receipts_total{status="accepted"}'):
            vals["accepted"] = float(line.split()[1])
    commits = vals.get("router_journal_commits_total") or 0
    out = {"commits": commits}
    if commits:
        out["mean_commit_ms"] = vals.get("router_journal_commit_seconds_sum", 0) / commits * 1e3
        if vals.get("accepted"):
            out["msgs_per_commit"] = vals["accepted"] / commits
    return out


def scrape_stats(scraper: Scraper, t0_ns: int, t1_ns: int) -> dict:
    """Counts, sorted durations and median size of the scrapes that started while the
    load ran (between ``t0_ns`` and ``t1_ns``)."""
    during = scraper.between(t0_ns, t1_ns)
    ok = [s for s in during if s[2] == 200]
    durs = sorted(s[1] for s in ok)
    out = {"during": len(during), "ok": len(ok), "all": len(scraper.samples),
           "errors": scraper.errors[:5], "durations_s": durs,
           "bytes": statistics.median([s[3] for s in ok]) if ok else 0}
    return out
