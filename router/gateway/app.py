"""One app's connection at the gateway: what waits to be written to it, in which order,
and how much it may hold.

Reliable deliveries wait in order and are never dropped: past ``max_reliable`` the app
is too slow, and it is disconnected (it resumes later from its last ack, nothing lost).
Notices are shed oldest first past ``max_notices``. Positions (LOCATION) are conflated
per key, newest wins, so a slow or returning app never gets a burst of stale ones.
"""

from __future__ import annotations

import asyncio
import collections
import time

from router.protocol import Delivery, MsgClass

from . import frames


class TooSlow(Exception):
    """The app's reliable queue passed its bound."""


def location_key(d: Delivery) -> str:
    """What a position is a position of: the rider (``from`` in the data, else the key
    the router conflated on, which the DELIVER does not carry: sender and kind)."""
    return f"{d.sender}|{d.kind}|{d.channel}"


class AppConnection:
    """The gateway's side of one app's WebSocket."""

    def __init__(self, ws, address: str, resumed_after: int, *, max_reliable: int = 2000,
                 max_notices: int = 500) -> None:
        self.ws = ws
        self.address = address
        self.kind = address.split(":", 1)[0]
        self.max_reliable, self.max_notices = max_reliable, max_notices
        #: last sequence the app acked (the router is acked up to here, no further)
        self.acked = resumed_after
        self.reliable: collections.deque[tuple[Delivery, bytes]] = collections.deque()
        self.notices: collections.deque[bytes] = collections.deque()
        self.latest: dict[str, bytes] = {}
        self.shed = 0
        self.conflated = 0
        self.sent = 0
        self.wake = asyncio.Event()
        self.closed = False

    def offer(self, d: Delivery) -> None:
        """Queue one delivery for the writer; raise TooSlow past the reliable bound."""
        if d.seq:
            if len(self.reliable) >= self.max_reliable:
                raise TooSlow(f"{len(self.reliable)} reliable messages unread")
            self.reliable.append((d, frames.deliver(d)))
        elif d.msg_class == MsgClass.LOCATION:
            key = location_key(d)
            if key in self.latest:
                self.conflated += 1
            self.latest[key] = frames.deliver(d)
        else:
            if len(self.notices) >= self.max_notices:
                self.notices.popleft()
                self.shed += 1
            self.notices.append(frames.deliver(d))
        self.wake.set()

    def queued(self) -> int:
        """Frames waiting to be written."""
        return len(self.reliable) + len(self.notices) + len(self.latest)

    def next_frame(self) -> tuple[bytes, Delivery | None] | None:
        """The next frame to write: reliable first (in sequence order), then notices,
        then the newest positions."""
        if self.reliable:
            d, frame = self.reliable.popleft()
            return frame, d
        if self.notices:
            return self.notices.popleft(), None
        if self.latest:
            key = next(iter(self.latest))
            return self.latest.pop(key), None
        return None

    async def write_loop(self, on_written) -> None:
        """Write frames as they come, awaiting the socket (its write buffer is the
        backpressure); ``on_written(delivery)`` after each reliable one."""
        while not self.closed:
            item = self.next_frame()
            if item is None:
                self.wake.clear()
                await self.wake.wait()
                continue
            frame, d = item
            await self.ws.send(frame.decode())
            self.sent += 1
            if d is not None:
                on_written(d)

    def age_ms(self, d: Delivery) -> float:
        """Milliseconds from the router accepting ``d`` to now (e2e to the app)."""
        return time.time() * 1000 - d.accepted_us / 1000
