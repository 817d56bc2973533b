"""How a client process hears "go", reports progress and learns when to stop
(router bench uses shared memory; the benchmarks' drivers give their own), and pacing."""

from __future__ import annotations

import time
from typing import Callable

from .plan import BATCH, BenchError, Plan

# ---------------------------------------------------------------------------------------
# Control: how a client process hears "go", reports progress and learns when to stop.
# router bench uses shared memory (Control); the benchmarks' drivers give their own.


class Control:
    """A run's shared state between the parent and its client processes."""

    def __init__(self, ctx, n_slots: int) -> None:
        self.go_event = ctx.Event()
        self.done = ctx.Event()          # publishers finished: expected counts are final
        self.release = ctx.Event()       # receivers finished: publishers may disconnect
        self.stop_event = ctx.Event()    # Ctrl-C or a failure: everyone stops
        self.counts = ctx.RawArray("q", n_slots)     # progress per process
        self.expected = ctx.RawArray("q", n_slots)   # per receiver, once done is set
        self.results = ctx.Queue()
        self.t0 = ctx.RawValue("q", 0)

    def wait_go(self) -> int:
        """Block until the parent says go; BenchError if it stops the run first."""
        while not self.go_event.wait(0.5):
            if self.stop_event.is_set():
                raise BenchError("stopped before go")
        return self.t0.value

    def tick(self, slot: int, n: int) -> None:
        """Publish this client's progress count."""
        self.counts[slot] = n

    def expected_for(self, r: int) -> int | None:
        """How many messages receiver ``r`` gets in all, once the publishers are done."""
        return self.expected[r] if self.done.is_set() else None

    def stopped(self) -> bool:
        """Whether the parent stopped the run (Ctrl-C or an error)."""
        return self.stop_event.is_set()

    def released(self) -> bool:
        """Whether a client may finish now (released, or stopped)."""
        return self.release.is_set() or self.stop_event.is_set()


class Pacer:
    """Open loop pacing: message i is due at t0 + i / rate (0: no pacing); a late sender
    catches up, so a stall shows in the latency tail instead of being skipped."""

    def __init__(self, rate: float, t0_ns: int) -> None:
        self.rate = rate
        self.t0 = t0_ns / 1e9

    def allowed(self, sent: int, now: float) -> int:
        """How many more messages may go now (BATCH at most)."""
        if not self.rate:
            return BATCH
        return max(0, min(BATCH, int((now - self.t0) * self.rate) + 1 - sent))

    def wait(self, sent: int, now: float) -> float:
        """Seconds until message ``sent`` is due."""
        return max(0.0, self.t0 + sent / self.rate - now) if self.rate else 0.0


def _ends(plan: Plan, p: int, started: float) -> Callable[[int], bool]:
    """A publisher's "finished" test: its share sent, or --duration passed."""
    if plan.duration:
        end = started + plan.duration
        return lambda sent: time.monotonic() >= end
    share = plan.share(p)
    return lambda sent: sent >= share

def ctl_ready(ctl, slot: int) -> None:
    """Tell the parent this client is connected (WELCOME received)."""
    put = getattr(ctl, "ready", None)
    if put is not None:
        put(slot)
    else:
        ctl.results.put({"role": "ready", "slot": slot})


def ctl_sent(ctl, slot: int, result: dict) -> None:
    """Hand a publisher's figures to the parent before it holds its connection."""
    put = getattr(ctl, "sent", None)
    if put is not None:
        put(slot, result)
    else:
        ctl.results.put(result)
