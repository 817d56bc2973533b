"""The process's side of durable storage: replay at start-up and segment upkeep.

The core and the store never call each other. This module moves bytes between them
with plain calls on both: the store's segments into ``Core.replay``, the core's
checkpoint into a new segment, and the core's count of live messages per segment into
the decision to delete one. Any :class:`router.journal.Store` works here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from .config import Settings
from .core import Core
from .journal import FileStore, Store

log = logging.getLogger("router.storage")


def open_store(settings: Settings, data_dir) -> Store | None:
    """The store ``settings`` name: the journal in ``data_dir`` (or none, with the
    journal off), or a Redis store (its writes fenced by a lease the caller takes)."""
    if settings.store:
        from .redis_store import RedisStore, connect   # redis-py: only when asked for
        return RedisStore(connect(settings.store), settings.store_prefix, token="",
                          replicas=settings.store_replicas, wait_ms=settings.store_wait_ms,
                          segment_bytes=min(settings.segment_bytes, 4 << 20),
                          retain_seconds=settings.dedup_seconds)
    if not settings.journal:
        return None
    return FileStore(data_dir / "journal", segment_bytes=settings.segment_bytes,
                     max_bytes=settings.max_journal_bytes,
                     retain_seconds=settings.dedup_seconds, fsync=settings.fsync)


@dataclass
class Recovery:
    """What start-up replay found."""

    segments: int = 0
    records: int = 0
    messages: int = 0  # deliveries still pending after replay
    dropped: list[str] = field(default_factory=list)  # one line per damaged segment
    seconds: float = 0.0


def recover(store: Store, core: Core) -> Recovery:
    """Replay every stored segment into ``core`` (cutting a damaged tail), then start
    a new segment headed by the core's checkpoint."""
    t0 = time.monotonic()
    rec = Recovery()
    last = 0
    for seg, data in store.stored_segments():
        good, records = core.replay(data, seg)
        rec.segments += 1
        rec.records += records
        last = seg
        if good < len(data):
            note = (f"segment {seg}: kept {records} records ({good} bytes), dropped "
                    f"{len(data) - good} bytes that were truncated or failed their CRC")
            rec.dropped.append(note)
            log.warning("journal recovery: %s", note)
            store.keep_prefix(seg, good)
    rec.messages = core.stats()["queued"]  # after the acks in the journal applied
    start_segment(store, core, last + 1)
    rec.seconds = time.monotonic() - t0
    return rec


def start_segment(store: Store, core: Core, segment: int) -> None:
    """Records go to ``segment`` from now on, which starts with every address's cursors
    (so deleting older segments never loses an address's numbering)."""
    core.set_segment(segment)
    store.start_segment(segment, core.checkpoint())


def maintain(store: Store, core: Core) -> None:
    """Between loop slices: roll a full segment; delete closed segments whose messages
    are all finished (acked, expired or failed) once their retention has passed."""
    if store.wants_roll():
        start_segment(store, core, store.segment + 1)
    for seg in store.reclaim_candidates():
        if not core.segment_live(seg):
            store.remove(seg)
