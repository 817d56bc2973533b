"""What a SEND carries before the engine takes it, shared by the blocking and asyncio
clients: the ``order=``/``key=`` rule, and a ``send_many`` batch with how far it got."""

from __future__ import annotations

from collections.abc import Iterable

from .protocol import MsgClass
from .session import MAX_TTL_MS, Payload, order_ref

__all__ = ["Batch", "NO_LIMIT", "send_key"]

#: send_many's bound on a plain payload when nothing else bounds it.
NO_LIMIT = 1 << 62


def send_key(order: str | int, key: str, ttl_ms: int) -> str:
    """The SEND key for ``order=``/``key=`` (checking ``ttl_ms`` too)."""
    if ttl_ms and not 0 <= ttl_ms <= MAX_TTL_MS:
        raise ValueError(f"ttl_ms must be 0 (no TTL) .. {MAX_TTL_MS}, got {ttl_ms}")
    if order == "":
        return key
    if key:
        raise ValueError(f"give order= or key=, not both (got order={order!r}, "
                         f"key={key!r}): the order travels as the key")
    return order_ref(order)


class Batch:
    """A send_many call's messages, their common options and how far it got."""

    __slots__ = ("messages", "options", "msg_class", "kind", "key", "ttl_ms", "channel",
                 "ids", "next")

    def __init__(self, messages: Iterable[tuple[str, Payload]], *, kind: str = "",
                 msg_class: MsgClass = MsgClass.ORDER, ttl_ms: int = 0,
                 order: str | int = "", key: str = "", channel: bool = False) -> None:
        self.messages = messages if type(messages) is list else list(messages)
        self.options = {"kind": kind, "msg_class": msg_class, "ttl_ms": ttl_ms,
                        "order": order, "key": key, "channel": channel}
        self.msg_class = int(msg_class)
        self.kind = kind.encode()
        self.key = send_key(order, key, ttl_ms).encode()
        self.ttl_ms = ttl_ms
        self.channel = channel
        self.ids: list[int] = []
        self.next = 0

    @property
    def done(self) -> bool:
        """Every message was queued."""
        return self.next >= len(self.messages)
