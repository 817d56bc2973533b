"""The Redis store: the journal's segments kept in Redis, every write fenced by the
leader's epoch and replicated before the router says ACCEPTED.

The router's core numbers messages per address, deduplicates and orders them in memory
and writes one record stream (the same bytes the embedded journal writes to its segment
files); this store keeps that stream. Each group commit is one Lua script (check the
caller still holds the lease with its epoch, then append) pipelined with ``WAIT`` for
the replicas, so a commit costs one round trip. What the script refuses (a stale
leader) raises :class:`Fenced`; a ``WAIT`` that times out cuts the append back off and
raises :class:`StoreError`, which the core turns into STORAGE_FAILED refusals.

Keys, all under one hash tag so they live in one slot (Redis Cluster ready)::

    {prefix}:lease      the holder's token "<node>/<epoch>", with a TTL (router.lease)
    {prefix}:epoch      incremented on every acquisition of the lease
    {prefix}:segs       sorted set of the stored segment numbers
    {prefix}:seg:<n>    segment n: its records, appended

docs/REDIS.md says what this does and does not guarantee.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import redis
from redis.sentinel import Sentinel

from .journal import Fenced, StoreError

log = logging.getLogger("router.redis_store")

__all__ = ["Fenced", "Keys", "RedisStore", "StoreError", "connect"]

#: Seconds a Redis call may take before it counts as failed (the core refuses the batch).
SOCKET_TIMEOUT_S = 5.0


class Keys:
    """The store's key names under ``prefix`` (one hash tag: one slot)."""

    def __init__(self, prefix: str) -> None:
        tag = "{" + prefix + "}"
        self.lease = f"{tag}:lease"
        self.epoch = f"{tag}:epoch"
        self.segs = f"{tag}:segs"
        self._seg = f"{tag}:seg:"

    def seg(self, n: int) -> str:
        """The key of segment ``n``."""
        return f"{self._seg}{n}"


# Each write script first checks the lease: the token names the node and its epoch, so
# a leader that lost the lease (paused, partitioned) cannot write after a new one took
# it, even if it still thinks it holds it.
_FENCE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED the lease is held by ' .. tostring(redis.call('GET', KEYS[1])))
end
"""

#: KEYS lease, seg, segs; ARGV token, records, segment number, mode ("a" append, "s" start)
APPEND = _FENCE + """
if ARGV[4] == 's' then
  redis.call('SET', KEYS[2], ARGV[2])
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[3])
  return string.len(ARGV[2])
end
return redis.call('APPEND', KEYS[2], ARGV[2])
"""

#: KEYS lease, seg; ARGV token, length: keep the first ``length`` bytes of the segment.
TRUNCATE = _FENCE + """
local n = tonumber(ARGV[2])
if n == 0 then
  redis.call('SET', KEYS[2], '')
else
  redis.call('SET', KEYS[2], redis.call('GETRANGE', KEYS[2], 0, n - 1))
end
return n
"""

#: KEYS lease, seg, segs; ARGV token, segment number
REMOVE = _FENCE + """
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
"""


def connect(url: str) -> redis.Redis:
    """A client for ``redis://host:port/db`` or ``redis-sentinel://host:port[,host:port
    ...]/master-name`` (the primary the sentinels name, followed across failovers)."""
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss", "unix"):
        return redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT_S,
                                    socket_connect_timeout=SOCKET_TIMEOUT_S)
    if parts.scheme == "redis-sentinel":
        master = parts.path.strip("/")
        nodes = [_host_port(hp, url) for hp in parts.netloc.split(",") if hp]
        if not master or not nodes:
            raise ValueError(f"store {url!r}: give redis-sentinel://host:port[,host:port"
                             "...]/master-name")
        sentinel = Sentinel(nodes, socket_timeout=SOCKET_TIMEOUT_S)
        return sentinel.master_for(master, socket_timeout=SOCKET_TIMEOUT_S,
                                   socket_connect_timeout=SOCKET_TIMEOUT_S)
    raise ValueError(f"store {url!r}: the scheme must be redis://, rediss:// or "
                     "redis-sentinel://")


def _host_port(text: str, url: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"store {url!r}: {text!r} is not host:port")
    return host, int(port)


class RedisStore:
    """A :class:`router.journal.Store` in Redis, for the leader holding ``token``.

    ``replicas``: copies besides the primary that must acknowledge a message commit
    (``WAIT``) within ``wait_ms`` before it counts; 0 takes the primary's word (one
    copy: development only). ``segment_bytes``: roll past this size. ``retain_seconds``:
    a closed segment is deletable this long after it closed (the dedup window).
    """

    def __init__(self, client: redis.Redis, prefix: str, token: str, *,
                 replicas: int = 1, wait_ms: int = 1000, segment_bytes: int = 4 << 20,
                 retain_seconds: float = 120.0) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.token = token
        self.replicas = replicas
        self.wait_ms = wait_ms
        self.segment_bytes = segment_bytes
        self.retain_seconds = retain_seconds
        self._append = client.register_script(APPEND)
        self._truncate = client.register_script(TRUNCATE)
        self._remove = client.register_script(REMOVE)
        self._segment = 0
        self._length = 0
        self._closed_at: dict[int, float] = {}
        self.total_bytes = 0

    # ------------------------------------------------------------------ replay

    def stored_segments(self) -> Iterator[tuple[int, bytes]]:
        """Every stored segment, oldest first (they count as closed from now)."""
        now = time.monotonic()
        try:
            numbers = [int(raw) for raw in self.client.zrange(self.keys.segs, 0, -1)]
        except redis.RedisError as exc:
            raise StoreError(f"redis: cannot list the stored segments: {exc}") from exc
        for n in numbers:
            try:
                data = self.client.get(self.keys.seg(n)) or b""
            except redis.RedisError as exc:
                raise StoreError(f"redis: cannot read segment {n}: {exc}") from exc
            self._closed_at[n] = now
            self.total_bytes += len(data)
            yield n, data

    def keep_prefix(self, segment: int, good: int) -> None:
        """Cut ``segment`` to its first ``good`` bytes (a damaged tail)."""
        self._call(self._truncate, [self.keys.lease, self.keys.seg(segment)], [good])

    # ------------------------------------------------------------------ writing

    def start_segment(self, segment: int, head: bytes) -> None:
        """Append to ``segment`` from now on, starting it with ``head``."""
        if self._segment and self._segment != segment:
            self._closed_at[self._segment] = time.monotonic()
        self._write(segment, head, "s", sync=True)
        self._segment, self._length = segment, len(head)

    def commit(self, records: bytes, sync: bool) -> None:
        """Append ``records`` to the current segment; with ``sync`` (messages), only
        once ``replicas`` copies acknowledged. Raises StoreError (the core refuses the
        batch) or Fenced (this router must stop)."""
        self._write(self._segment, records, "a", sync)
        self._length += len(records)
        self.total_bytes += len(records)

    def _write(self, segment: int, data: bytes, mode: str, sync: bool) -> None:
        keys = [self.keys.lease, self.keys.seg(segment), self.keys.segs]
        pipe = self.client.pipeline(transaction=False)
        self._append(keys=keys, args=[self.token, data, segment, mode], client=pipe)
        waits = sync and self.replicas > 0
        if waits:
            pipe.execute_command("WAIT", self.replicas, self.wait_ms)
        try:
            got = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            raise StoreError(f"redis: {exc}") from exc
        if isinstance(got[0], Exception):
            raise _error(got[0])
        if waits and (isinstance(got[1], Exception) or got[1] < self.replicas):
            self._cut_back(segment, int(got[0]) - len(data))
            raise StoreError(f"redis: {got[1]} of {self.replicas} replicas acknowledged "
                             f"the commit within {self.wait_ms} ms (WAIT); refused")

    def _cut_back(self, segment: int, length: int) -> None:
        """Undo an append that did not replicate, so the stream the core rolls back to
        is the stream stored (a copy that already reached a replica stays there: a
        message refused this way may still be delivered once; docs/REDIS.md)."""
        try:
            self._call(self._truncate, [self.keys.lease, self.keys.seg(segment)], [length])
        except StoreError as exc:
            log.error("redis store: could not cut segment %d back to %d bytes: %s",
                      segment, length, exc)

    def _call(self, script, keys: list[str], args: list) -> object:
        try:
            return script(keys=keys, args=[self.token, *args])
        except redis.ResponseError as exc:
            raise _error(exc) from exc
        except redis.RedisError as exc:
            raise StoreError(f"redis: {exc}") from exc

    # ------------------------------------------------------------------ upkeep

    @property
    def segment(self) -> int:
        """The segment appended to now."""
        return self._segment

    def wants_roll(self) -> bool:
        """Whether the current segment passed ``segment_bytes``."""
        return self._length >= self.segment_bytes

    def reclaim_candidates(self) -> list[int]:
        """Closed segments past their retention."""
        cutoff = time.monotonic() - self.retain_seconds
        return sorted(n for n, t in self._closed_at.items() if t <= cutoff)

    def remove(self, segment: int) -> None:
        """Delete a segment whose messages are all finished."""
        self._call(self._remove, [self.keys.lease, self.keys.seg(segment), self.keys.segs],
                   [segment])
        self._closed_at.pop(segment, None)

    def close(self) -> None:
        """Close the connection (every commit was already acknowledged)."""
        self.client.close()


def _error(exc: Exception) -> StoreError:
    text = str(exc)
    if "FENCED" in text:
        return Fenced(f"redis store: this router lost its lease ({text}); it must stop")
    return StoreError(f"redis: {text}")
