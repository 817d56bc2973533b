"""What an endpoint holds on the receiving side, shared by the blocking and asyncio
endpoints and the service workers: the addresses it binds, their cursors, the
deliveries the application has not taken yet, and acks (the send side is in
outgoing.py)."""

from __future__ import annotations

import collections
from collections.abc import Iterable

from .engine import Engine
from .protocol import Delivery
from .session import check_address

__all__ = ["Addresses"]


class Addresses:
    """What an endpoint adds to a client: bound addresses, their cursors, and acks
    (shared by :class:`Endpoint`, the asyncio endpoint and the service workers)."""

    engine: Engine

    def _start_addresses(self, addresses: Iterable[str], name: str | None,
                         cursors: dict[str, int] | None,
                         auto_ack: bool) -> tuple[str, dict[str, int]]:
        """Set up the endpoint side; return the connection's name (the first address
        unless given) and the cursors its first HELLO presents."""
        addresses = list(addresses)
        self.auto_ack = auto_ack
        #: Received deliveries the application has not taken yet.
        self._ready: collections.deque[Delivery] = collections.deque()
        start = self._start_cursors(addresses, cursors)
        return name or (addresses[0] if addresses else "endpoint"), start

    def _take_ready(self, max_count: int) -> list[Delivery]:
        """Up to ``max_count`` of the deliveries already received, oldest first."""
        ready = self._ready
        if len(ready) <= max_count:
            out = list(ready)
            ready.clear()
            return out
        return [ready.popleft() for _ in range(max_count)]

    def _start_cursors(self, addresses: Iterable[str],
                       cursors: dict[str, int] | None) -> dict[str, int]:
        start = {check_address(a): 0 for a in addresses}
        start.update({check_address(a): seq for a, seq in (cursors or {}).items()})
        #: Last sequence the application acked per address.
        self.acked: dict[str, int] = dict(start)
        return start

    @property
    def duplicates(self) -> int:
        """Redelivered messages dropped because this endpoint already had them."""
        return self.engine.stats()["duplicates"]

    @property
    def cursors(self) -> dict[str, int]:
        """Last sequence acked per address: persist it, and pass it as ``cursors`` to
        resume there after this process restarts."""
        return dict(self.acked)

    def _bind(self, addresses: Iterable[str]) -> None:
        names = [check_address(a) for a in addresses]
        for a in names:
            self.acked.setdefault(a, 0)
        self.engine.bind([(a.encode(), self.acked[a]) for a in names])

    def bind_at(self, cursors: dict[str, int]) -> None:
        """Bind addresses resuming at these cursors (the last sequence whoever holds
        the address has): everything above comes (again), even what this connection
        was handed before. A gateway resumes a reconnecting app this way."""
        names = {check_address(a): int(seq) for a, seq in cursors.items()}
        self.acked.update(names)
        self.engine.bind([(a.encode(), seq) for a, seq in names.items()], reset=True)

    def _unbind(self, addresses: Iterable[str]) -> None:
        names = [check_address(a) for a in addresses]
        for a in names:  # the engine keeps what a later bind needs (keep_unbound)
            self.acked.pop(a, None)
        self.engine.unbind([a.encode() for a in names])

    def ack_to(self, address: str, seq: int) -> None:
        """Ack everything up to ``seq`` on ``address`` (a gateway acks for its app)."""
        if seq and seq > self.acked.get(address, 0):
            self.acked[address] = seq
            self.engine.ack(address.encode(), seq)

    def ack(self, delivery: Delivery) -> None:
        """Ack ``delivery`` and all before it on its address (deliveries without a
        sequence, best effort, need none). Acks are cumulative and go out on the
        engine's next pass, merged with the others."""
        seq = delivery.seq
        if seq and seq > self.acked.get(delivery.address, 0):
            self.acked[delivery.address] = seq
            self.engine.ack(delivery.address.encode(), seq)
