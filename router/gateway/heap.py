"""The gateway's heap and CPython's full garbage collections: timed, and kept short.

A gateway holding 10,000 apps has a heap of long-lived Python objects (connections,
their buffers and queues), and every full collection walked all of it: measured,
241-414 ms with the whole gateway stopped and 0 objects collected, so one landing in a
busy second put every app's p99 past 200 ms. After each full collection the survivors
are frozen (``gc.freeze``): later collections walk only what came since. Every
``refresh_s`` they are thawed once, so that a cycle left by a closed connection among
them is still found (one long collection per refresh, not one per heap growth).
"""

from __future__ import annotations

import gc
import time
from typing import Callable

#: Thaw the frozen heap this often (s), so cycles among the frozen are collected.
REFRESH_S = 900.0


class LongLivedHeap:
    """Time every full collection (``on_pause(seconds, objects collected)``) and, with
    ``freeze``, freeze its survivors and thaw them every ``refresh_s``. Call
    :meth:`tick` from the event loop (the gateway's watcher, once a second): the freeze
    happens there, not inside the collector's callback."""

    def __init__(self, *, freeze: bool = True, refresh_s: float = REFRESH_S,
                 on_pause: Callable[[float, int], None] | None = None) -> None:
        self.freeze, self.refresh_s, self.on_pause = freeze, refresh_s, on_pause
        self.thawed_at = time.monotonic()
        self._started = 0.0
        self._full_done = False
        gc.callbacks.append(self._on_collection)

    def _on_collection(self, phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
            return
        self._full_done = True
        if self.on_pause is not None:
            self.on_pause(time.perf_counter() - self._started, info["collected"])

    def tick(self) -> None:
        """Freeze after a full collection; thaw when the refresh is due."""
        if not self.freeze:
            return
        if self._full_done:
            self._full_done = False
            gc.freeze()
        if time.monotonic() - self.thawed_at >= self.refresh_s:
            self.thawed_at = time.monotonic()
            gc.unfreeze()

    def close(self) -> None:
        """Stop watching collections, and thaw what is frozen."""
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)
        if self.freeze:
            gc.unfreeze()
