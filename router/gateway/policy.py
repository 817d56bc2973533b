"""What an app may send through the gateway, by the kind of address its token names.

The router checks the gateway's own principal; the gateway checks each app against
this table first (``(class, target pattern)`` pairs; a channel pattern is for sends
with ``channel``). Everything an app sends carries its address as ``from``, so no app
can speak for another.
"""

from __future__ import annotations

from router.auth.grants import matches
from router.protocol import MsgClass

#: address kind -> allowed (message class, target pattern, to a channel?)
POLICY: dict[str, tuple[tuple[MsgClass, str, bool], ...]] = {
    "user": ((MsgClass.ORDER, "svc:orders", False), (MsgClass.CHAT, "order:*", True)),
    "merchant": ((MsgClass.ORDER, "svc:orders", False), (MsgClass.CHAT, "order:*", True)),
    "rider": ((MsgClass.ORDER, "svc:orders", False), (MsgClass.CHAT, "order:*", True),
              (MsgClass.LOCATION, "user:*", False),
              (MsgClass.LOCATION, "dispatch:riders", True)),
}


def may_send(address: str, msg_class: MsgClass, target: str, channel: bool) -> bool:
    """Whether the app holding ``address`` may send this."""
    kind = address.split(":", 1)[0]
    return any(c == msg_class and ch == channel and matches(p, target)
               for c, p, ch in POLICY.get(kind, ()))
