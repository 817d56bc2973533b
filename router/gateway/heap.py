"""Keep the gateway's long-lived objects out of CPython's full garbage collections.

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

#: Thaw the frozen heap this often (s), so cycles among the frozen are collected.
REFRESH_S = 900.0


class LongLivedHeap:
    """Freeze the survivors of each full collection; thaw them every ``refresh_s``.
    Call :meth:`tick` from the event loop (the gateway's watcher, once a second): the
    freeze happens there, not inside the collector's callback."""

    def __init__(self, refresh_s: float = REFRESH_S) -> None:
        self.refresh_s = refresh_s
        self.thawed_at = time.monotonic()
        self._full_done = False
        gc.callbacks.append(self._after_collection)

    def _after_collection(self, phase: str, info: dict) -> None:
        if phase == "stop" and info["generation"] == 2:
            self._full_done = True

    def tick(self) -> None:
        """Freeze after a full collection; thaw when the refresh is due."""
        if self._full_done:
            self._full_done = False
            gc.freeze()
        if time.monotonic() - self.thawed_at >= self.refresh_s:
            self.thawed_at = time.monotonic()
            gc.unfreeze()

    def close(self) -> None:
        """Stop freezing, and thaw what is frozen."""
        if self._after_collection in gc.callbacks:
            gc.callbacks.remove(self._after_collection)
        gc.unfreeze()
