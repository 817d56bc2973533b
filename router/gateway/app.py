"""One app's connection at the gateway: what waits to be written to it, in which order,
and how much it may hold.

Reliable deliveries wait in order and are never dropped: an app that holds more than
``max_reliable`` of them unwritten and takes none for a second is too slow, and it is
disconnected (it resumes later from its last ack, nothing lost). The router's window
per address bounds what can wait here in the first place.
Notices are shed oldest first past ``max_notices``. Positions (LOCATION) are conflated
per key, newest wins, so a slow or returning app never gets a burst of stale ones.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Callable

from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from router.protocol import Delivery, MsgClass

from . import frames


def location_key(d: Delivery) -> str:
    """What a position is a position of: the rider (``from`` in the data, else the key
    the router conflated on, which the DELIVER does not carry: sender and kind)."""
    return f"{d.sender}|{d.kind}|{d.channel}"


class AppConnection:
    """The gateway's side of one app's WebSocket."""

    def __init__(self, ws, address: str, resumed_after: int, *, max_reliable: int = 2000,
                 max_notices: int = 500,
                 on_written: Callable[[AppConnection, Delivery], None] | None = None) -> None:
        self.ws = ws
        self.address = address
        self.kind = address.split(":", 1)[0]
        self.max_reliable, self.max_notices = max_reliable, max_notices
        #: last sequence the app acked (the router is acked up to here, no further)
        self.acked = resumed_after
        self.reliable: collections.deque[tuple[Delivery, bytes]] = collections.deque()
        self.notices: collections.deque[tuple[Delivery, bytes]] = collections.deque()
        self.latest: dict[str, tuple[Delivery, bytes]] = {}
        self.shed = 0
        self.conflated = 0
        self.sent = 0
        self._sent_seen = 0
        self.closed = False
        #: called after each delivery is written (metrics: e2e latency)
        self.on_written = on_written
        # The writer runs only while frames wait: an idle app holds no task and no
        # event (10,000 idle apps saved ~2 KiB each, issue 13's memory target).
        self._writer: asyncio.Task | None = None
        #: the answer to the gateway's last ping (a future; None before the first)
        self.pong: asyncio.Future | None = None

    def offer(self, d: Delivery) -> None:
        """Queue one delivery for the writer."""
        if d.seq:
            self.reliable.append((d, frames.deliver(d)))
        elif d.msg_class == MsgClass.LOCATION:
            key = location_key(d)
            if key in self.latest:
                self.conflated += 1
            self.latest[key] = (d, frames.deliver(d))
        else:
            if len(self.notices) >= self.max_notices:
                self.notices.popleft()
                self.shed += 1
            self.notices.append((d, frames.deliver(d)))
        if self._writer is None and not self.closed and not self._write_now():
            self._writer = asyncio.get_running_loop().create_task(self._write())

    def stuck(self) -> bool:
        """More than ``max_reliable`` reliable frames wait and none was written since
        the last call (the watcher calls it once a second)."""
        wrote, self._sent_seen = self.sent != self._sent_seen, self.sent
        return len(self.reliable) > self.max_reliable and not wrote

    def write_blocked(self) -> bool:
        """The socket's write buffer is past its high-water mark: a send would wait."""
        transport = self.ws.transport
        return transport is None or \
            transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]

    def queued(self) -> int:
        """Frames waiting to be written."""
        return len(self.reliable) + len(self.notices) + len(self.latest)

    def next_frame(self) -> tuple[Delivery, bytes] | None:
        """The next delivery to write and its frame: reliable first (in sequence
        order), then notices, then the newest positions."""
        if self.reliable:
            return self.reliable.popleft()
        if self.notices:
            return self.notices.popleft()
        if self.latest:
            return self.latest.pop(next(iter(self.latest)))
        return None

    def _write_now(self) -> bool:
        """Write what waits at once, while the socket takes it without waiting; True
        when nothing is left. The common case (an app keeping up, a frame or two at a
        time): no task, no await, one transport write per frame. Called only while no
        writer task runs, so frames keep their order."""
        ws = self.ws
        while ws.protocol.state is State.OPEN and not self.write_blocked():
            item = self.next_frame()
            if item is None:
                return True
            d, frame = item
            ws.protocol.send_text(frame)   # the frame is UTF-8 JSON already
            ws.send_data()
            self._wrote(d)
        return not self.queued()

    def _wrote(self, d: Delivery) -> None:
        self.sent += 1
        if self.on_written is not None:
            self.on_written(self, d)

    async def _write(self) -> None:
        """Write what waits, awaiting the socket (its write buffer is the backpressure),
        then end; ``offer`` starts it again when more comes."""
        try:
            while not self.closed and (item := self.next_frame()) is not None:
                d, frame = item
                await self.ws.send(frame.decode())
                self._wrote(d)
        except ConnectionClosed:  # the reader side sees it too, and closes the app
            pass
        finally:
            self._writer = None

    def stop(self) -> None:
        """The app is closing: write nothing more."""
        self.closed = True
        if self._writer is not None:
            self._writer.cancel()

    def age_ms(self, d: Delivery) -> float:
        """Milliseconds from the router accepting ``d`` to now (e2e to the app)."""
        return time.time() * 1000 - d.accepted_us / 1000
