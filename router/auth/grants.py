"""Rights, name patterns and principals: what one authenticated party may do.

A principal's rights on a name are the OR of the rights of every rule whose pattern
matches the name. A pattern is an exact name (``merchant:881``), a prefix ending in
``*`` (``rider:*``), or ``*`` (every name); nothing else. The native core evaluates the
same rules (:func:`compile_rules`), once per (principal, name), and caches the answer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from router.protocol import MsgClass, Role

N_CLASSES = len(MsgClass)


class Action(enum.IntFlag):
    """One bit per right; SEND rights are per message class, to an address or a channel."""

    BIND = 1 << 0
    JOIN = 1 << 1  # join addresses to a channel, or have them leave it
    SERVE = 1 << 2  # READY for a service
    REQUEST = 1 << 3  # REQUEST to a service (built-in ones included)
    SEND_ORDER = 1 << 8
    SEND_DISPATCH = 1 << 9
    SEND_CHAT = 1 << 10
    SEND_NOTICE = 1 << 11
    SEND_LOCATION = 1 << 12
    CHANNEL_ORDER = 1 << 16
    CHANNEL_DISPATCH = 1 << 17
    CHANNEL_CHAT = 1 << 18
    CHANNEL_NOTICE = 1 << 19
    CHANNEL_LOCATION = 1 << 20

    @classmethod
    def send(cls, msg_class: int) -> "Action":
        """The right to SEND ``msg_class`` to an address."""
        return cls(cls.SEND_ORDER << int(msg_class))

    @classmethod
    def channel(cls, msg_class: int) -> "Action":
        """The right to SEND ``msg_class`` to a channel."""
        return cls(cls.CHANNEL_ORDER << int(msg_class))


SEND_ANY = Action(0)
CHANNEL_ANY = Action(0)
for _c in MsgClass:
    SEND_ANY |= Action.send(_c)
    CHANNEL_ANY |= Action.channel(_c)

#: The bit layout the native core is given (Core.set_auth's ``rights``).
CORE_RIGHTS = {"bind": int(Action.BIND), "join": int(Action.JOIN),
               "send": [int(Action.send(c)) for c in MsgClass],
               "channel": [int(Action.channel(c)) for c in MsgClass]}

#: Scopes of the built-in queries (router.history, router.presence).
SCOPES = ("all", "own", "none")


def check_pattern(pattern: str) -> str:
    """``pattern`` if it is an exact name, a ``prefix*`` or ``*``; else ValueError."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"a name pattern must be a non-empty string, got {pattern!r}")
    if "*" in pattern[:-1] or any(ch.isspace() or not ch.isprintable() for ch in pattern):
        raise ValueError(f"pattern {pattern!r}: write an exact name (merchant:881), a prefix "
                         "ending in * (rider:*), or * alone; no other wildcards or spaces")
    if len(pattern.encode()) > 255:
        raise ValueError(f"pattern {pattern[:40]!r}...: names are at most 255 bytes")
    return pattern


def matches(pattern: str, name: str) -> bool:
    """Whether ``name`` matches ``pattern`` (see the module docstring)."""
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return name == pattern


@dataclass(frozen=True)
class Rule:
    """Rights given to every name that matches ``pattern``."""

    rights: Action
    pattern: str


@dataclass(frozen=True)
class Rate:
    """A send budget: ``messages`` and ``bytes`` per second (0: unlimited), with bursts
    of ``burst`` seconds' worth."""

    messages: float = 0.0
    bytes: float = 0.0
    burst: float = 1.0


@dataclass(frozen=True)
class Principal:
    """One party the credentials file names: what it may declare and do."""

    name: str
    keys: tuple[str, ...] = ()  #: its CURVE public keys, Z85
    roles: frozenset[Role] = frozenset()
    names: tuple[str, ...] = ()  #: HELLO names it may use (patterns)
    rules: tuple[Rule, ...] = ()
    history: str = "none"  #: router.history scope: all, own, none
    presence: str = "none"  #: router.presence scope
    rate: Rate = field(default_factory=Rate)
    queue_quota: int = 0  #: deliveries it may have waiting (0: the router's default)

    def rights(self, name: str) -> Action:
        """Every right this principal has on ``name``."""
        out = Action(0)
        for rule in self.rules:
            if matches(rule.pattern, name):
                out |= rule.rights
        return out

    def allows(self, action: Action, name: str) -> bool:
        """Whether this principal may do ``action`` on ``name``."""
        return bool(self.rights(name) & action)

    def may_hello(self, role: Role, name: str) -> bool:
        """Whether it may say HELLO with this role and name."""
        return role in self.roles and any(matches(p, name) for p in self.names)

    def compiled(self) -> tuple:
        """The form Core.set_auth takes (see there)."""
        return (self.name.encode(), sum(1 << int(r) for r in self.roles),
                [p.encode() for p in self.names], compile_rules(self),
                float(self.rate.messages), float(self.rate.bytes), float(self.rate.burst),
                int(self.queue_quota))


def compile_rules(principal: Principal) -> list[tuple[int, bytes]]:
    """``(rights mask, pattern bytes)`` per rule, rules of one pattern merged; a pattern
    ending in ``*`` is a prefix (the core's semantics equal :meth:`Principal.rights`)."""
    merged: dict[str, int] = {}
    for rule in principal.rules:
        merged[rule.pattern] = merged.get(rule.pattern, 0) | int(rule.rights)
    return [(mask, pattern.encode()) for pattern, mask in merged.items()]
