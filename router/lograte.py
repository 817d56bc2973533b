"""Log lines about peers, bounded per kind so that a flood of peers cannot flood the log.

A router under a reconnect storm or a hostile client sees thousands of connects, refusals
and worker arrivals a second. Formatting and writing a line for each costs more than the
routing does (measured: logging was 19% of the router's CPU under the hostile-peer run),
and nobody reads that log. Each kind of line gets ``burst`` lines per ``interval``; what
is held back is counted and reported in one line when the interval ends. The counters in
/metrics count every event, logged or not.
"""

from __future__ import annotations

import logging
import time

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """At most ``burst`` lines per ``interval`` seconds for one kind of event."""

    __slots__ = ("logger", "what", "burst", "interval", "_window_end", "_logged", "_held")

    def __init__(self, logger: logging.Logger, what: str, burst: int = 20,
                 interval: float = 10.0) -> None:
        self.logger = logger
        self.what = what  # names the lines in the summary: "peer connected", ...
        self.burst = burst
        self.interval = interval
        self._window_end = 0.0
        self._logged = 0
        self._held = 0

    def log(self, level: int, msg: str, *args: object) -> None:
        """Log the line if this interval has room for it, else count it."""
        now = time.monotonic()
        if now >= self._window_end:
            self._roll(now)
        if self._logged < self.burst:
            self._logged += 1
            self.logger.log(level, msg, *args)
        else:
            self._held += 1

    def flush(self) -> None:
        """Report what the interval held back once it has ended (called between slices,
        so that the summary comes even when the flood stops)."""
        now = time.monotonic()
        if now >= self._window_end and self._held:
            self._roll(now)

    def _roll(self, now: float) -> None:
        if self._held:
            self.logger.warning("%d more '%s' lines in the last %.0f s were not logged "
                                "(at most %d per %.0f s); /metrics counts every one",
                                self._held, self.what, self.interval, self.burst,
                                self.interval)
        self._window_end = now + self.interval
        self._logged = 0
        self._held = 0
