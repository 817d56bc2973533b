"""The native core: one libzmq (pyzmq's), its refusal to start wrong, and its own tables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from router import core

ROOT = Path(__file__).resolve().parent.parent


def mapped_libzmq(pid: int) -> set[str]:
    """Distinct files named libzmq* mapped into process ``pid``."""
    paths = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and os.path.basename(parts[5]).startswith("libzmq"):
            paths.add(os.path.realpath(parts[5]))
    return paths


def test_router_process_maps_exactly_one_libzmq(router):
    maps = mapped_libzmq(router.pid)
    assert len(maps) == 1, maps
    assert os.path.realpath(core.libzmq_path()) in maps


def test_core_resolved_pyzmqs_library():
    assert mapped_libzmq(os.getpid()) == {os.path.realpath(core.libzmq_path())}
    assert ".".join(map(str, core.libzmq_version())) == zmq.zmq_version()


def test_missing_core_names_the_fix(tmp_path):
    pkg = tmp_path / "router"
    pkg.mkdir()
    for src in (ROOT / "router").glob("*.py"):
        (pkg / src.name).write_text(src.read_text())
    # -S: no site-packages, so an editable install's import hook cannot supply the
    # checkout's built core to this copy of the package.
    out = subprocess.run([sys.executable, "-S", "-c", "import router.core"], cwd=tmp_path,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode != 0
    assert "pip install ." in out.stderr and "build_ext --inplace" in out.stderr


def test_core_refuses_a_non_router_socket():
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    try:
        try:
            core.Core(s)
        except ValueError as exc:
            assert "ROUTER" in str(exc)
        else:
            raise AssertionError("Core accepted a DEALER socket")
    finally:
        s.close(linger=0)


def test_journal_crc_is_crc32c_in_hardware_and_table_alike():
    from router import checks

    assert checks.crc32c_check(b"123456789") == (0xE3069283, 0xE3069283)  # the check value
    blob = bytes(range(256)) * 41 + b"tail"  # odd length: the 8-byte loop and the rest
    hw, table = checks.crc32c_check(blob)
    assert hw == table


@pytest.mark.parametrize("keys", [50, 3000])
def test_dedup_table_agrees_with_a_dict(keys):
    # Erasure moves later entries of a probe run back into the gap; a mistake there loses
    # ids (a repeat delivered twice) or keeps dead ones. Checked against a dict.
    from router import checks
    assert checks.dedup_check(100_000, keys, 7) == 0


def test_only_peers_that_send_are_interned_as_senders():
    # Interned sender names stay for the router's life; endpoints (one per user, rider,
    # merchant) never send, so they must not be interned.
    from router import protocol as P
    ctx = zmq.Context.instance()
    router_sock = ctx.socket(zmq.ROUTER)
    router_sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router_sock.bind("inproc://intern-test")
    c = core.Core(router_sock, dedup_capacity=1000)
    peers = []
    try:
        for i in range(20):
            p = ctx.socket(zmq.DEALER)
            p.connect("inproc://intern-test")
            p.send(P.encode_hello(P.Role.ENDPOINT, f"user:{i}", [(f"user:{i}", 0)]))
            peers.append(p)
        s = ctx.socket(zmq.DEALER)
        s.connect("inproc://intern-test")
        peers.append(s)
        s.send(P.encode_hello(P.Role.SENDER, "orders"))
        for _ in range(5):
            c.run(10)
        assert c.stats()["sender_names"] == 0
        s.send_multipart([P.encode_send("user:3", 1, P.MsgClass.ORDER), b"{}"])
        for _ in range(5):
            c.run(10)
        assert c.stats()["sender_names"] == 1
        got = []
        while peers[3].poll(500):
            got.append(peers[3].recv_multipart()[0][2])
        assert got[:2] == [P.Command.WELCOME, P.Command.DELIVER], got
    finally:
        for p in peers:
            p.close(linger=0)
        del c
        router_sock.close(linger=0)


def test_histogram_buckets_match_a_plain_search_over_the_bounds():
    """observe() starts its scan from the value's power of two: it must land in the same
    bucket as a plain search (first bound >= value, else +Inf)."""
    import bisect
    import random
    from router import checks
    bounds_us = [round(b * 1e6) for b in core.histogram_bounds()["hop"]]
    rng = random.Random(3)
    values = [0, 1, 49, 50, 51, 62, 63, 64, 60_000_000, 60_000_001, 2**63, 2**64 - 1]
    values += bounds_us + [b + 1 for b in bounds_us] + [b - 1 for b in bounds_us]
    values += [rng.randrange(1 << rng.randrange(1, 64)) for _ in range(20_000)]
    want = [bisect.bisect_left(bounds_us, v) for v in values]
    assert checks.observe_check(values) == want


def _history_event(kind, ts, mid, seq, st, code, cls, names, payload=b""):
    import struct
    out = struct.pack(">BQQQBHB", kind, ts, mid, seq, st, code, cls)
    for name in names:
        out += bytes([len(name)]) + name
    return out + struct.pack(">I", len(payload)) + payload


def test_native_history_rows_match_the_python_reference():
    from router.history import parse_events, rows
    blob = b"".join([
        _history_event(1, 1_700_000_000_000_000, 2**64 - 1, 2**63, 0, 0, 1,
                       [b"order:1", b"orders", b"merchant:1", b"order.created", b""],
                       b"payload"),
        _history_event(4, 5, 7, 0, 4, 24, 2, [b"order:2", b"s", b"", b"", b"order:2"]),
        _history_event(9, 0, 0, 1, 200, 999, 77, [b"order:\xff", b"", b"", b"", b""]),
    ])
    assert rows(blob) == list(parse_events(blob))
    assert rows(b"") == []
    with pytest.raises(ValueError, match="cut short"):
        rows(blob[:-3])


def test_history_writer_writes_on_its_thread_and_drops_when_behind(tmp_path):
    from router.history import History, HistoryWriter
    import time
    now_us = int(time.time() * 1e6)  # older events would be pruned as past retention
    event = _history_event(1, now_us, 1, 1, 0, 0, 1,
                           [b"order:9", b"orders", b"merchant:1", b"order.created", b""])
    w = HistoryWriter(tmp_path / "h.db", max_pending=len(event) * 2)
    assert w.submit(event) and w.submit(b"")
    assert not w.submit(event * 3)  # more than the writer may ever hold: dropped, counted
    w.close()
    assert w.written >= 1 and w.pending_bytes == 0 and w.failures == 0
    assert w.dropped == 1
    reader = History(tmp_path / "h.db")
    assert [e["event"] for e in reader.timeline("9")] == ["accepted"]
    reader.close()


def test_dedup_table_grows_without_a_rehash_and_loses_nothing():
    """Past 3/4 full a table twice the size takes over and the old one's entries move a
    few per insert; lookups and erasures meanwhile see every id exactly once."""
    from router import checks
    bad, cap, during = checks.dedup_growth_check(200_000, 11)
    assert bad == 0
    assert cap >= 2 * 1024 and during > 0  # it grew, and ids came and went while it did
