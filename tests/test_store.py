"""The file store and the storage wiring, in process: a real Core on a real ROUTER
socket, a real journal directory, no router process."""

from __future__ import annotations

import zmq

from router import protocol as P
from router import storage
from router.core import Core
from router.journal import FileStore

from support import Peer


def make_core(tmp_path, store):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.bind(f"ipc://{tmp_path}/core.sock")
    return Core(sock, store=store), sock, f"ipc://{tmp_path}/core.sock"


def run_until(core, cond, passes=200):
    for _ in range(passes):
        core.run(10)
        if cond():
            return True
    return False


def test_an_accepted_message_survives_in_the_store_and_replays(tmp_path):
    store = FileStore(tmp_path / "data", fsync=False)
    core, sock, url = make_core(tmp_path, store)
    rec = storage.recover(store, core)
    assert (rec.segments, rec.messages) == (0, 0) and store.segment == 1
    with Peer(url) as s:
        s.send(P.encode_hello(P.Role.SENDER, "orders"))  # WELCOME comes as the core runs
        s.send(P.encode_send("merchant:1", 7, P.MsgClass.ORDER), b"order")
        assert run_until(core, lambda: core.stats()["queued"] == 1)
    store.close()
    sock.close(linger=0)

    again = FileStore(tmp_path / "data", fsync=False)
    core2, sock2, _ = make_core(tmp_path / "data", again)
    try:
        rec = storage.recover(again, core2)
        assert rec.segments == 1 and rec.messages == 1 and not rec.dropped
        assert again.segment == 2  # a new segment, headed by the checkpoint
    finally:
        again.close()
        sock2.close(linger=0)


def test_a_torn_tail_is_cut_and_reported(tmp_path):
    store = FileStore(tmp_path / "data", fsync=False)
    store.start_segment(1, b"")
    store.commit(b"\x00\x00\x00\x10garbage", sync=False)  # a length with no body
    store.close()
    again = FileStore(tmp_path / "data", fsync=False)
    core, sock, _ = make_core(tmp_path, again)
    try:
        rec = storage.recover(again, core)
        assert rec.dropped and "dropped" in rec.dropped[0]
        assert dict(again.stored_segments())[1] == b""
    finally:
        again.close()
        sock.close(linger=0)


def test_a_finished_segment_is_reclaimed_after_its_retention(tmp_path):
    store = FileStore(tmp_path / "data", fsync=False, segment_bytes=1, retain_seconds=0)
    core, sock, _ = make_core(tmp_path, store)
    try:
        storage.recover(store, core)
        store.commit(b"x", sync=False)  # past segment_bytes
        assert store.wants_roll()
        storage.maintain(store, core)  # rolls to 2; 1 has nothing live: deleted
        assert store.segment == 2 and store.segments() == [2]
    finally:
        store.close()
        sock.close(linger=0)


def test_a_segment_that_cannot_be_opened_leaves_no_stale_fd(tmp_path, monkeypatch):
    """Out of file descriptors (EMFILE) when rolling to a new segment: the old segment's
    fd is closed, and its number may be handed to a socket at once. The store must not
    write records to that number, nor close it again (measured: journal records written
    into a libzmq connection, then libzmq aborting with EBADF in epoll.cpp)."""
    import errno
    import os
    store = FileStore(tmp_path / "data", fsync=False)
    store.start_segment(1, b"")
    r, w = os.pipe()
    real_open = os.open

    def no_fds(path, *a, **k):
        if str(path).endswith(".log"):
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", no_fds)
    try:
        store.start_segment(2, b"")
    except OSError:
        pass
    monkeypatch.setattr(os, "open", real_open)
    other = os.dup(w)  # the lowest free number: the closed segment's
    try:
        try:
            store.commit(b"records", sync=False)
        except OSError:
            pass
        os.set_blocking(r, False)
        try:
            leaked = os.read(r, 100)
        except BlockingIOError:
            leaked = b""
        assert leaked == b"", "records went to a descriptor the store no longer owns"
        store.start_segment(2, b"")
        os.write(other, b"x")  # still open: the store did not close it again
    finally:
        for fd in (r, w, other):
            try:
                os.close(fd)
            except OSError:
                pass
        store.close()
