"""The durable journal: the storage interface and its embedded file backend.

The native core produces and consumes journal *records* (``ext/journal.pxi`` defines
them: CRC'd, length-prefixed, one per (address, seq) delivery, ack, cursor checkpoint
and final receipt). A :class:`Store` only has to keep those bytes safe:

* :meth:`Store.commit` is the durability point. The core calls it once per loop pass
  with every record of that pass (group commit) and sends ``ACCEPTED`` receipts, and
  delivers, only after it returns. Raising refuses the whole batch (``STORAGE_FAILED``).
  A remote engine (for example Redis Cluster) would make this one atomic, replicated
  append and return when the engine confirms it.
* :meth:`Store.open` replays what was stored into a fresh core at start-up.
* :meth:`Store.maintain` runs between loop slices: rolling and reclaiming space.

Why an append-only segment log rather than SQLite or LMDB: measured here, one
``write`` + ``fdatasync`` of a 64 KiB batch takes about 0.2 ms, so a pass of 512
messages commits in well under a millisecond and the router stays near its in-memory
throughput; SQLite in WAL mode spends microseconds per row in the Python binding, which
at 100k msg/s is most of a core. The log's records are already what the core needs to
rebuild its queues, so start-up is one sequential read per segment, and a torn or
corrupt tail is cut at the last record whose CRC checks.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

log = logging.getLogger("router.journal")

SUFFIX = ".log"
#: File in the journal directory that a running store holds an exclusive flock on.
LOCK_NAME = "LOCK"


class DirectoryLocked(OSError):
    """Another process (another router) holds the journal directory."""


def lock_directory(directory: Path) -> int:
    """Take an exclusive flock on ``directory/LOCK`` and write our pid in it; return
    the descriptor, which holds the lock until it is closed. The kernel releases the
    lock when the process dies, even by SIGKILL, so a crashed router never leaves a
    stale lock behind. Raises DirectoryLocked naming the holder's pid when it can."""
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        who = f"pid {holder}" if holder.isdigit() else "pid unknown"
        raise DirectoryLocked(
            errno.EAGAIN, f"{directory} is in use by another router ({who}); stop that "
            "router first, or give this one its own --data-dir") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Store(Protocol):
    """What the router needs from durable storage (see the module docstring)."""

    def open(self, core) -> "Recovery":
        """Replay stored records into ``core``; return what was recovered or dropped."""

    def commit(self, records: bytes, sync: bool) -> None:
        """Make ``records`` durable (``sync``: the batch holds messages; without it the
        records are acks and outcomes, which may be written lazily). Raise to refuse."""

    def maintain(self, core) -> None:
        """Between loop slices: roll segments, reclaim acknowledged ones."""

    def close(self) -> None:
        """Flush and close."""


@dataclass
class Recovery:
    """What start-up replay found."""

    segments: int = 0
    records: int = 0
    messages: int = 0  # deliveries still pending after replay
    dropped: list[str] = field(default_factory=list)  # one line per damaged segment
    seconds: float = 0.0


class FileStore:
    """Append-only segment files in ``directory`` (the embedded default).

    ``segment_bytes``: roll to a new segment past this size. ``max_bytes``: a disk
    budget; commits beyond it fail like a full disk. ``retain_seconds``: a segment whose
    messages are all finished is deleted once it has been closed this long (the dedup
    window, so a repeated id after a restart still finds its record). ``fsync=False``
    trades durability for speed (tests and benchmarks of the in-memory cost).

    One store per directory: the constructor takes ``LOCK`` there (see
    :func:`lock_directory`) and raises DirectoryLocked while another process holds it,
    since two routers appending to one journal would each replay the other's segments.
    """

    def __init__(self, directory: str | Path, *, segment_bytes: int = 64 << 20,
                 max_bytes: int = 0, retain_seconds: float = 120.0, fsync: bool = True) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = lock_directory(self.dir)
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self.retain_seconds = retain_seconds
        self.fsync = fsync
        self._fd = -1
        self._seg = 0
        self._size = 0
        self._closed: dict[int, float] = {}  # segment -> monotonic time it was closed
        self._sizes: dict[int, int] = {}

    def _path(self, seg: int) -> Path:
        return self.dir / f"{seg:010d}{SUFFIX}"

    def segments(self) -> list[int]:
        """Numbers of the segment files present, oldest first."""
        return sorted(int(p.stem) for p in self.dir.glob(f"*{SUFFIX}") if p.stem.isdigit())

    @property
    def total_bytes(self) -> int:
        """Bytes held in all segments."""
        return sum(self._sizes.values())

    def open(self, core) -> Recovery:
        """Replay every segment into ``core`` and open a new segment for appends."""
        t0 = time.monotonic()
        rec = Recovery()
        segs = self.segments()
        for seg in segs:
            data = self._path(seg).read_bytes()
            good, records = core.replay(data, seg)
            rec.segments += 1
            rec.records += records
            if good < len(data):
                note = (f"segment {self._path(seg).name}: kept {records} records "
                        f"({good} bytes), dropped {len(data) - good} bytes that were "
                        "truncated or failed their CRC")
                rec.dropped.append(note)
                log.warning("journal recovery: %s", note)
                with open(self._path(seg), "r+b") as fh:
                    fh.truncate(good)
                    os.fsync(fh.fileno())
            self._sizes[seg] = good
            self._closed[seg] = time.monotonic()
        rec.messages = core.stats()["queued"]  # after the acks in the journal applied
        self._start_segment(core, (segs[-1] + 1) if segs else 1)
        rec.seconds = time.monotonic() - t0
        return rec

    def _start_segment(self, core, seg: int) -> None:
        """Open segment ``seg``, headed by a checkpoint of every address's cursors."""
        if self._fd >= 0:
            os.close(self._fd)
            self._closed[self._seg] = time.monotonic()
        self._fd = os.open(self._path(seg), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._seg, self._size = seg, os.fstat(self._fd).st_size
        self._sizes[seg] = self._size
        core.set_segment(seg)
        head = core.checkpoint()
        if head:
            self._write(head)
        if self.fsync:
            os.fsync(self._fd)
            dfd = os.open(self.dir, os.O_RDONLY)  # make the new file's name durable too
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def commit(self, records: bytes, sync: bool) -> None:
        """Append ``records``; fdatasync when ``sync`` and fsync is on (raises OSError)."""
        if self.max_bytes and self.total_bytes + len(records) > self.max_bytes:
            raise OSError(errno.ENOSPC, f"journal would exceed its budget of {self.max_bytes} "
                          "bytes (max_journal_bytes)")
        self._write(records)
        if sync and self.fsync:
            os.fdatasync(self._fd)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        start = self._size
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
                self._size += n
        except OSError:
            # Leave no partial batch behind: the core refuses the whole batch.
            os.ftruncate(self._fd, start)
            self._size = start
            raise
        finally:
            self._sizes[self._seg] = self._size

    def maintain(self, core) -> None:
        """Roll a full segment; delete closed ones with nothing live past the retention."""
        if self._size >= self.segment_bytes:
            self._start_segment(core, self._seg + 1)
        now = time.monotonic()
        for seg, closed_at in list(self._closed.items()):
            if seg == self._seg or core.segment_live(seg) or now - closed_at < self.retain_seconds:
                continue
            try:
                self._path(seg).unlink()
            except FileNotFoundError:
                pass
            del self._closed[seg]
            self._sizes.pop(seg, None)
            log.debug("journal: reclaimed segment %d", seg)

    def close(self) -> None:
        """Sync and close the open segment, then release the directory's lock."""
        if self._fd >= 0:
            if self.fsync:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
