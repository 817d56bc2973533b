"""Leadership of a router cluster on one Redis store: a lease with an epoch.

Several ``router serve`` nodes point at the same store; the one holding the lease serves
(replays the store, binds its endpoints), the others wait as standbys and take over
when it lapses. The lease is one key (``SET NX PX``, renewed by its holder) whose value
is a token ``<node>/<epoch>``; every acquisition increments the epoch, and every write
to the store carries the token, so a node that lost the lease cannot write (fencing).

A holder also stops *itself* in time: it counts the lease as valid until the moment it
sent its last successful renewal plus ``lease_ms`` less a margin for clock rate drift,
and the core refuses to deliver past that instant (``Core.set_lease_until``). Redis
expires the key no earlier than ``lease_ms`` after it received that renewal, so the
holder's own deadline passes first: a paused node (SIGSTOP, a long GC, a VM stall)
that wakes up after a standby took over finds its deadline gone and stops before it
sends anything.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable

import redis

from .redis_store import Keys

log = logging.getLogger("router.lease")

__all__ = ["Lease", "LeaseLost"]

#: Seconds between warnings while Redis cannot be reached to take the lease.
UNREACHABLE_LOG_S = 30.0

#: Share of the lease a holder trusts its own clock for (the rest covers rate drift
#: between its clock and Redis's, and the renewal's own flight time).
TRUST = 0.8

#: KEYS lease, epoch; ARGV node, ms. Take a free lease (or one this node name held, as
#: after a restart) with the next epoch; return the token, or false when another holds it.
ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, string.len(ARGV[1]) + 1) ~= ARGV[1] .. '/' then
  return false
end
local token = ARGV[1] .. '/' .. redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return token
"""

#: KEYS lease; ARGV token, ms. Extend the lease if this token still holds it.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

#: KEYS lease; ARGV token. Let go (a clean stop: the standby need not wait it out).
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LeaseLost(RuntimeError):
    """The lease passed to another node, or could not be renewed in time."""


def default_node_id() -> str:
    """``host:pid``: unique per process, so a restarted process waits out its old lease
    unless it is given the same ``--node-id``."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Lease:
    """One node's lease on the store under ``prefix`` (``lease_ms`` long)."""

    def __init__(self, client: redis.Redis, prefix: str, node: str, lease_ms: int) -> None:
        if "/" in node:
            raise ValueError(f"node id {node!r}: no '/' (it separates node and epoch)")
        self.client = client
        self.keys = Keys(prefix)
        self.node = node
        self.lease_ms = lease_ms
        self.token = ""
        self.epoch = 0
        #: time.monotonic() until which this node may act as the leader.
        self.valid_until = 0.0
        self._acquire = client.register_script(ACQUIRE)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> str:
        """The token of whoever holds the lease now ("" if nobody)."""
        got = self.client.get(self.keys.lease)
        return got.decode() if got else ""

    def acquire(self, stop: threading.Event, on_wait: Callable[[str], None] | None = None) -> bool:
        """Wait until this node holds the lease (or ``stop`` is set: False). While
        another holds it, ``on_wait(holder)`` is called once per holder."""
        seen, warned = None, -math.inf
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                token = self._acquire(keys=[self.keys.lease, self.keys.epoch],
                                      args=[self.node, self.lease_ms])
            except redis.RedisError as exc:
                if t0 - warned >= UNREACHABLE_LOG_S:   # not one line per retry
                    log.warning("lease: redis unreachable (%s); retrying", exc)
                    warned = t0
                token = None
            if token:
                self.token = token.decode()
                self.epoch = int(self.token.rsplit("/", 1)[1])
                self.valid_until = t0 + self.lease_ms * TRUST / 1000
                return True
            holder = self._holder_or_none()
            if holder != seen and holder and on_wait:
                on_wait(holder)
            seen = holder
            stop.wait(self.lease_ms / 4000)
        return False

    def _holder_or_none(self) -> str | None:
        try:
            return self.holder()
        except redis.RedisError:
            return None

    def renew(self) -> None:
        """Extend the lease; raise LeaseLost if another node holds it or it passed."""
        t0 = time.monotonic()
        try:
            ok = self._renew(keys=[self.keys.lease], args=[self.token, self.lease_ms])
        except redis.RedisError as exc:
            if time.monotonic() >= self.valid_until:
                raise LeaseLost(f"lease {self.token}: not renewed before it ran out "
                                f"({exc})") from exc
            log.warning("lease %s: renewal failed (%s); retrying", self.token, exc)
            return
        if not ok:
            raise LeaseLost(f"lease {self.token}: now held by {self._holder_or_none()!r}")
        self.valid_until = t0 + self.lease_ms * TRUST / 1000

    def keep(self, on_renewed: Callable[[float], None], on_lost: Callable[[LeaseLost], None]) -> None:
        """Renew on a thread every third of the lease: ``on_renewed(valid_until)`` after
        each renewal, ``on_lost(error)`` once if it is lost (the thread then ends)."""
        def run() -> None:
            while not self._stop.wait(self.lease_ms / 3000):
                try:
                    self.renew()
                except LeaseLost as exc:
                    on_lost(exc)
                    return
                on_renewed(self.valid_until)

        self._thread = threading.Thread(target=run, name="router-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and give the lease up, so a standby need not wait it out."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.lease_ms / 1000)
        if self.token:
            try:
                self._release(keys=[self.keys.lease], args=[self.token])
            except redis.RedisError as exc:
                log.warning("lease %s: not released (%s); it lapses by itself", self.token, exc)
