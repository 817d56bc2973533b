"""End-to-end latency of the city's own messages, measured where they are received.

The city sends (through the order service) and receives (through its gateway) in one
process, so it can time each message from the moment it is handed to the SDK to the
moment a party's connection hands it over: the latency a rider's or a user's app would
see, router hops, queues and acks included. A message to a channel gives one sample per
member. Deliveries to a party that was offline when the message was sent are counted
apart (they measure the outage, not the router), as are deliveries of messages sent too
long ago to be remembered.
"""

from __future__ import annotations

import collections
import math
import time


class E2ELatency:
    """Send times of recent messages by (sender, message id), and the samples since the
    last :meth:`take`."""

    def __init__(self, remember_s: float = 120.0, max_remembered: int = 500_000) -> None:
        self.remember_s, self.max_remembered = remember_s, max_remembered
        self._sent: collections.OrderedDict[tuple[str, int], float] = collections.OrderedDict()
        self._samples: list[float] = []
        self.waited_offline = 0  # deliveries to a party that was offline at send time
        self.unmatched = 0       # deliveries of messages sent too long ago (or not timed)

    def sent(self, sender: str, msg_id: int, at: float | None = None) -> None:
        """``sender`` handed message ``msg_id`` to the SDK now (or at ``at``, monotonic)."""
        now = time.monotonic() if at is None else at
        self._sent[(sender, msg_id)] = now
        horizon = now - self.remember_s
        while self._sent and (len(self._sent) > self.max_remembered
                              or next(iter(self._sent.values())) < horizon):
            self._sent.popitem(last=False)

    def received(self, sender: str, msg_id: int, back_at: float = -math.inf,
                 at: float | None = None) -> None:
        """A party received ``sender``'s ``msg_id``; ``back_at`` is when that party last
        came back online (monotonic), so a message that waited for it is told apart."""
        t_sent = self._sent.get((sender, msg_id))
        if t_sent is None:
            self.unmatched += 1
        elif t_sent < back_at:
            self.waited_offline += 1
        else:
            self._samples.append((time.monotonic() if at is None else at) - t_sent)

    def take(self) -> list[float]:
        """The samples (seconds) since the last call."""
        out, self._samples = self._samples, []
        return out


def percentile(samples: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of ``samples``; NaN when empty."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]
