"""The durable journal: the storage interface and its embedded file backend.

The native core produces and consumes journal *records* (``ext/journal.pxi`` defines
them: CRC'd, length-prefixed, one per (address, seq) delivery, ack, cursor checkpoint
and final receipt). A :class:`Store` only has to keep those bytes safe:

* :meth:`Store.commit` is the durability point. The core calls it once per loop pass
  with every record of that pass (group commit) and sends ``ACCEPTED`` receipts, and
  delivers, only after it returns. Raising refuses the whole batch (``STORAGE_FAILED``).
  A remote engine (for example Redis Cluster) would make this one atomic, replicated
  append and return when the engine confirms it.
* :meth:`Store.stored_segments` hands back what was stored, for replay into a fresh
  core at start-up; rolling to a new segment and deleting finished ones are asked for
  between loop slices. :mod:`router.storage` drives both; the store never sees the core.

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
from pathlib import Path
from typing import Iterator, Protocol

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


class StoreError(RuntimeError):
    """A commit that did not reach the copies it needs: the core refuses the batch
    (STORAGE_FAILED) and rolls it back."""


class Fenced(StoreError):
    """The store refused a write because this router no longer holds the lease of a
    shared store (router/lease.py): it must stop accepting and delivering."""


class Store(Protocol):
    """What the router needs from durable storage, and all of it: a remote engine
    implements exactly these calls. The store never sees the core: the process
    (router/storage.py) hands bytes from one to the other, so data flows one way."""

    def stored_segments(self) -> Iterator[tuple[int, bytes]]:
        """Every stored segment, oldest first: ``(number, records)`` for replay."""

    def keep_prefix(self, segment: int, good: int) -> None:
        """Replay stopped ``good`` bytes into ``segment`` (torn, or a failed CRC): drop
        the rest."""

    def start_segment(self, segment: int, head: bytes) -> None:
        """Append to ``segment`` from now on, starting it with ``head`` (a checkpoint)."""

    def commit(self, records: bytes, sync: bool) -> None:
        """Make ``records`` durable (``sync``: the batch holds messages; without it the
        records are acks and outcomes, which may be written lazily). Raise to refuse:
        the core then refuses the batch. This is the durability point: ACCEPTED goes
        out only after it returns."""

    @property
    def segment(self) -> int:
        """The segment appended to now."""

    def wants_roll(self) -> bool:
        """Whether the current segment is full and a new one should start."""

    def reclaim_candidates(self) -> list[int]:
        """Closed segments past their retention: deletable once nothing in them is live."""

    def remove(self, segment: int) -> None:
        """Delete a segment whose messages are all finished."""

    def close(self) -> None:
        """Flush and close."""


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

    def stored_segments(self) -> Iterator[tuple[int, bytes]]:
        """Every segment file's bytes, oldest first."""
        for seg in self.segments():
            data = self._path(seg).read_bytes()
            self._sizes[seg] = len(data)
            self._closed[seg] = time.monotonic()
            yield seg, data

    def keep_prefix(self, segment: int, good: int) -> None:
        """Truncate ``segment`` to its first ``good`` bytes, durably."""
        with open(self._path(segment), "r+b") as fh:
            fh.truncate(good)
            os.fsync(fh.fileno())
        self._sizes[segment] = good

    def start_segment(self, segment: int, head: bytes) -> None:
        """Open segment ``segment`` for appends, headed by ``head`` (the core's
        checkpoint of every address's cursors), and make its name durable."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1  # closed: its number may go to a socket next
            os.close(fd)
            self._closed[self._seg] = time.monotonic()
        self._fd = os.open(self._path(segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._seg, self._size = segment, os.fstat(self._fd).st_size
        self._sizes[segment] = self._size
        if head:
            self._write(head)
        if self.fsync:
            os.fsync(self._fd)
            dfd = os.open(self.dir, os.O_RDONLY)  # make the new file's name durable too
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    @property
    def segment(self) -> int:
        """The segment appended to now (0 before start_segment)."""
        return self._seg

    def wants_roll(self) -> bool:
        """Whether the open segment has reached ``segment_bytes``."""
        return self._size >= self.segment_bytes

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

    def reclaim_candidates(self) -> list[int]:
        """Closed segments older than ``retain_seconds`` (the dedup window: a repeated id
        after a restart still finds its record until then)."""
        now = time.monotonic()
        return [seg for seg, closed_at in self._closed.items()
                if seg != self._seg and now - closed_at >= self.retain_seconds]

    def remove(self, segment: int) -> None:
        """Delete a segment file."""
        try:
            self._path(segment).unlink()
        except FileNotFoundError:
            pass
        self._closed.pop(segment, None)
        self._sizes.pop(segment, None)
        log.debug("journal: reclaimed segment %d", segment)

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
