"""Order history: every reliable message and outcome of an order, with timestamps.

The core emits history events for messages linked to an order (sent to an
``order:<id>`` channel, or carrying ``order:<id>`` as their key); the router drains them
between loop slices and :class:`HistoryWriter` writes them into SQLite on a thread of its
own (WAL mode, so `router history` and the ``router.history`` service read while it
writes): the routing loop never waits for the database. This is the record used to
settle disputes: who sent what, when the router accepted it, when it went to each party,
when each acked, or when it expired.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterator

import lz4.frame

from . import core as _native
from .protocol import (HISTORY_EVENT, HISTORY_NAMES, HISTORY_PAYLOAD_LEN, NAME_LEN, ErrorCode,
                       HistoryEvent, MsgClass, Status)

log = logging.getLogger("router.history")

LZ4_MAGIC = b"\x04\x22\x4d\x18"

#: Event bytes the writer may hold before it drops new buffers (and counts them).
MAX_PENDING_BYTES = 64 << 20
#: Retention: at most PRUNE_ROWS expired events deleted every PRUNE_SECONDS (20,000/s:
#: above the ~7,800 events/s the soak writes at 3,000 msg/s, so an old backlog shrinks;
#: one step is a bounded DELETE on the writer's thread, never on the routing loop).
PRUNE_SECONDS = 1.0
PRUNE_ROWS = 20000

_FIXED = HISTORY_EVENT  # kind, ts_us, msg_id, seq, status, code, class
#: Event kind number -> the name stored in the history table.
EVENTS = {int(e): e.name.lower() for e in HistoryEvent}

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    order_ref TEXT NOT NULL, ts_us INTEGER NOT NULL, event TEXT NOT NULL,
    msg_id INTEGER NOT NULL, seq INTEGER NOT NULL, status TEXT, code TEXT,
    class TEXT NOT NULL, sender TEXT NOT NULL, address TEXT, kind TEXT, channel TEXT,
    payload BLOB
);
CREATE INDEX IF NOT EXISTS events_by_order ON events (order_ref, ts_us);
"""


def _signed(v: int) -> int:
    """SQLite integers are 64-bit signed; message ids and sequences use all 64 bits."""
    return v - (1 << 64) if v >= 1 << 63 else v


def _unsigned(v: int) -> int:
    return v + (1 << 64) if v < 0 else v


# Names by number, looked up per event (an Enum call per field cost more than the insert).
_STATUS = {int(s): s.name for s in Status}
_CODE = {int(c): c.name for c in ErrorCode}
_CLASS = {int(c): c.name for c in MsgClass}


def parse_events(blob: bytes) -> Iterator[tuple]:
    """Rows from the core's history buffer (layout: router/protocol.py HISTORY_EVENT,
    written by ext/history.pxi's _hist): the readable reference for the native decoder
    (:func:`rows`) the writer uses."""
    off, n = 0, len(blob)
    fixed, unpack = _FIXED.size, _FIXED.unpack_from
    head, plen_size = NAME_LEN.size, HISTORY_PAYLOAD_LEN.size
    while off < n:
        kind, ts, mid, seq, st, code, cls = unpack(blob, off)
        off += fixed
        names = []
        for _ in range(HISTORY_NAMES):  # order, sender, address, kind, channel
            ln = blob[off]
            names.append(blob[off + head: off + head + ln].decode(errors="replace"))
            off += head + ln
        (plen,) = HISTORY_PAYLOAD_LEN.unpack_from(blob, off)
        payload = blob[off + plen_size: off + plen_size + plen] if plen else None
        off += plen_size + plen
        order, sender, address, mkind, channel = names
        status = _STATUS.get(st, str(st)) if st else None
        ecode = _CODE.get(code, str(code)) if code else None
        yield (order, ts, EVENTS.get(kind, str(kind)), _signed(mid), _signed(seq), status, ecode,
               _CLASS.get(cls, str(cls)), sender, address or None, mkind, channel or None,
               payload)


def rows(blob: bytes) -> list[tuple]:
    """The rows of one history buffer, decoded natively (ext/history.pxi)."""
    return _native.history_rows(blob, EVENTS, _STATUS, _CODE, _CLASS)


class History:
    """The history database at ``path``."""

    def __init__(self, path: str | Path, retain_days: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.retain_days = retain_days
        self._last_prune = 0.0
        self.pruned = 0  #: events deleted for being older than the retention

    def record(self, blob: bytes) -> int:
        """Store the events of one drained buffer; return how many."""
        if not blob:
            return 0
        decoded = rows(blob)
        self.db.execute("BEGIN")
        try:
            self.db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                                decoded)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")  # leave no open transaction behind, whatever failed
            raise
        self._maybe_prune()
        return len(decoded)

    def _maybe_prune(self) -> None:
        """Every PRUNE_SECONDS, delete at most PRUNE_ROWS events older than the
        retention: bounded work per write, so a long backlog of old events is worked off
        over many passes instead of one statement that holds the database for seconds.
        Rows are inserted in time order, so the oldest are the lowest rowids: the step
        looks at the first PRUNE_ROWS rows by rowid and no further (a filter on ts_us
        alone would scan the whole table whenever nothing has expired yet, every
        second, and the table grows all month)."""
        now = time.time()
        if now - self._last_prune < PRUNE_SECONDS:
            return
        self._last_prune = now
        cutoff = int((now - self.retain_days * 86400) * 1e6)
        oldest = self.db.execute("SELECT ts_us FROM events ORDER BY rowid LIMIT 1").fetchone()
        if oldest is None or oldest[0] >= cutoff:
            return  # nothing expired: one index lookup, not a scan
        cur = self.db.execute("DELETE FROM events WHERE rowid IN (SELECT rowid FROM events "
                              "ORDER BY rowid LIMIT ?) AND ts_us < ?", (PRUNE_ROWS, cutoff))
        self.pruned += max(cur.rowcount, 0)

    def size_bytes(self) -> int:
        """Bytes of the database on disk, its write-ahead log included."""
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal"))
                   if p.exists())

    def timeline(self, order: str) -> list[dict]:
        """Every event of ``order`` (``order:<id>`` or just the id), oldest first."""
        ref = order if order.startswith("order:") else f"order:{order}"
        cur = self.db.execute(
            "SELECT ts_us, event, msg_id, seq, status, code, class, sender, address, kind, "
            "channel, payload FROM events WHERE order_ref = ? ORDER BY ts_us, rowid", (ref,))
        cols = [c[0] for c in cur.description]
        out = []
        for row in cur:
            d = dict(zip(cols, row))
            d["msg_id"], d["seq"] = _unsigned(d["msg_id"]), _unsigned(d["seq"])
            out.append(d)
        return out

    def close(self) -> None:
        """Close the database."""
        self.db.close()


class HistoryWriter:
    """Writes drained history buffers into the database on its own thread.

    ``submit`` never blocks: SQLite's commit can take milliseconds (far more on a slow or
    full disk), and the router's loop must not wait for it. Beyond ``max_pending`` bytes
    waiting, new buffers are dropped and counted (the journal, not the history, is what
    makes messages durable). ``close`` writes what is left, then stops the thread."""

    def __init__(self, path: str | Path, retain_days: float = 30.0,
                 max_pending: int = MAX_PENDING_BYTES) -> None:
        self.path = Path(path)
        self._db = History(path, retain_days)  # used by the thread only, after this
        self.max_pending = max_pending
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0
        #: Events written, buffers dropped (queue full), write failures.
        self.written = self.dropped = self.failures = 0
        self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
        self._thread.start()

    def submit(self, blob: bytes) -> bool:
        """Queue one drained buffer; False if it was dropped (the writer is behind)."""
        if not blob:
            return True
        with self._lock:
            if self._pending + len(blob) > self.max_pending:
                self.dropped += 1
                return False
            self._pending += len(blob)
        self._queue.put(blob)
        return True

    @property
    def size_bytes(self) -> int:
        """Bytes of the history database on disk (with its write-ahead log)."""
        return self._db.size_bytes()

    @property
    def pruned(self) -> int:
        """Events deleted for being older than the retention."""
        return self._db.pruned

    @property
    def pending_bytes(self) -> int:
        """Event bytes submitted and not yet written."""
        return self._pending

    def _run(self) -> None:
        while (blob := self._queue.get()) is not None:
            try:
                self.written += self._db.record(blob)
            except Exception:
                self.failures += 1
                if self.failures == 1 or self.failures % 1000 == 0:
                    log.exception("order history write failed (%d so far); routing goes on",
                                  self.failures)
            finally:
                with self._lock:
                    self._pending -= len(blob)
        self._db.close()

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued (for at most ``timeout`` seconds), then close."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("order history writer did not finish in %.0f s; %d bytes unwritten",
                      timeout, self._pending)


def format_timeline(events: list[dict]) -> str:
    """Human-readable lines for `router history`."""
    lines = []
    for e in events:
        ts = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["ts_us"] / 1e6))
        ts += f".{e['ts_us'] % 1_000_000 // 1000:03d}Z"
        what = {"accepted": f"{e['sender']} sent {e['kind'] or e['class'].lower()}",
                "sent": f"delivered to {e['address']} (seq {e['seq']})",
                "acked": f"acked by {e['address']} (seq {e['seq']})",
                "final": f"{e['status']}" + (f" ({e['code']})" if e["code"] else "")}[e["event"]]
        line = f"{ts}  msg {e['msg_id']:>20}  {what}"
        if e["event"] == "accepted" and e["payload"] is not None:
            body = bytes(e["payload"])
            if body.startswith(LZ4_MAGIC):
                body = lz4.frame.decompress(body)
            line += "  " + body[:200].decode(errors="replace")
        lines.append(line)
    return "\n".join(lines)
