"""The Redis store (router/redis_store.py) and failover (router/lease.py), against real
redis-server processes and real routers.

A run fails if any ACCEPTED message is missing, delivered twice to one endpoint or out
of order for its address: a SIGKILL of the router (replay from Redis), a replica that
does not acknowledge (refused, not accepted on one copy), the active router killed
(the standby takes over), the active router paused past its lease (it neither accepts
nor delivers after waking), and, in the long run, Sentinel promoting the replica after
the primary's SIGKILL."""

from __future__ import annotations

import json
import signal
import time
from datetime import datetime
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from redis_support import RedisPair, Sentinels, missing_programs
from router.client import Endpoint, Sender
from router.protocol import ErrorCode, Status
from support import (RouterProcess, crash_loop, free_port, frames_until, start_gateway,
                     token, wait_until)

pytestmark = pytest.mark.skipif(bool(missing_programs()),
                                reason=f"{missing_programs()} not installed "
                                       "(apt-get install redis-server redis-sentinel)")

LEASE_MS = 1500


def _router(store: str, node: str, *extra: str) -> RouterProcess:
    return RouterProcess("--store", store, "--node-id", node, "--lease-ms", str(LEASE_MS),
                         "--history", "false", "--heartbeat-ms", "500", *extra)


@pytest.fixture
def routers():
    """Routers a test starts; all SIGKILLed at teardown."""
    made: list[RouterProcess] = []
    yield made
    for r in made:
        r.stop(signal.SIGKILL)
        r.remove_files()


@pytest.fixture
def pair(tmp_path):
    with RedisPair(tmp_path / "redis").start() as p:
        yield p


class Tally:
    """Receipts of one sender: which ids were ACCEPTED, which refused and why."""

    def __init__(self) -> None:
        self.accepted: set[int] = set()
        self.refused: dict[int, object] = {}

    def __call__(self, r) -> None:
        if r.status == Status.ACCEPTED:
            self.accepted.add(r.msg_id)
        elif r.status == Status.REFUSED:
            self.refused[r.msg_id] = r.code


def _drain(ep: Endpoint, got: list, want: set[int], timeout: float) -> list:
    """Take deliveries into ``got`` (acking each batch) until every id in ``want`` is
    there, or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while not want <= {d.msg_id for d in got} and time.monotonic() < deadline:
        batch = ep.recv_many(1000, timeout=0.1)
        if batch:
            got += batch
            ep.ack(batch[-1])
    return got


def _check_once_in_order(got: list, accepted: set[int]) -> None:
    ids = [d.msg_id for d in got]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} delivered twice"
    assert accepted <= set(ids), f"{len(accepted - set(ids))} ACCEPTED never delivered"
    seqs = [d.seq for d in got]
    assert all(b > a for a, b in zip(seqs, seqs[1:])), "sequences out of order"


def test_accepted_messages_survive_a_sigkill_replayed_from_redis(pair, routers):
    r = _router(pair.primary.url, "a")
    routers.append(r.start())
    with Sender(r.url, "orders") as s:
        ids = s.send_many([("merchant:1", b"order %d" % i) for i in range(500)])
        assert s.flush(10) == 0
    assert pair.replica.client().zcard("{router}:segs") >= 1   # replicated by WAIT
    r.kill()
    r.restart()
    with Endpoint(r.url, ["merchant:1"]) as m:
        got = _drain(m, [], set(ids), 10)
    _check_once_in_order(got, set(ids))
    assert [d.payload for d in got[:2]] == [b"order 0", b"order 1"]
    assert "journal redis://" in r.log()


def test_a_commit_no_replica_acknowledges_is_refused_not_accepted(pair, routers):
    r = _router(pair.primary.url, "a", "--store-wait-ms", "200")
    routers.append(r.start())
    tally = Tally()
    with Sender(r.url, "orders", on_receipt=tally) as s:
        s.send("merchant:1", b"before")
        assert s.flush(5) == 0
        pair.replica.kill()
        mid = s.send("merchant:1", b"one copy only")
        receipt = s.wait(mid, Status.REFUSED, timeout=10)
    assert receipt.status == Status.REFUSED and receipt.code == ErrorCode.STORAGE_FAILED
    assert mid not in tally.accepted
    assert "STORAGE_FAILED" in r.wait_for_log("sends refused with STORAGE_FAILED")


def test_the_standby_takes_over_when_the_active_router_is_killed(pair, routers):
    a, b = _router(pair.primary.url, "a"), _router(pair.primary.url, "b")
    routers += [a.start(), b.start(wait=False)]
    b.wait_for_log("standby: a/", 10)
    both = f"{a.url},{b.url}"
    tally = Tally()
    s = Sender(both, "orders", on_receipt=tally, resend_after=1.0)
    m = Endpoint(both, ["merchant:1"])
    got: list = []
    try:
        for i in range(3000):       # ~1,000 msg/s for 3 s, the active killed midway
            s.send("merchant:1", b"%d" % i)
            if i == 1500:
                a.kill()
                killed = time.time()
            if i % 50 == 0:
                s.poll(0)
                got += m.recv_many(1000, timeout=0.001)
                if got:
                    m.ack(got[-1])
                time.sleep(0.05)
        assert s.flush(20) == 0, "messages never ACCEPTED by the standby"
        s.poll(0.1)
        _drain(m, got, tally.accepted, 20)
    finally:
        s.close()
        m.close()
    took = _logged_at(b.wait_for_log("leading with epoch 2", 1), "leading with epoch 2") - killed
    print(f"standby leading {took:.2f} s after the SIGKILL (lease {LEASE_MS} ms)")
    assert took < LEASE_MS / 1000 + 2.0
    assert len(tally.accepted) == 3000 and not tally.refused
    _check_once_in_order(got, tally.accepted)
    assert s.engine.stats()["failovers"] >= 1


def _logged_at(log: str, text: str) -> float:
    """The wall-clock time of the first log line holding ``text``."""
    line = next(x for x in log.splitlines() if text in x)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_a_paused_leader_neither_accepts_nor_delivers_after_its_lease(pair, routers):
    a, b = _router(pair.primary.url, "a"), _router(pair.primary.url, "b")
    routers += [a.start(), b.start(wait=False)]
    b.wait_for_log("standby: a/", 10)
    tally = Tally()
    s = Sender(f"{a.url},{b.url}", "orders", on_receipt=tally, resend_after=1.0)
    on_a = Endpoint(a.url, ["user:9"])                  # only ever on the old leader
    on_b = Endpoint(b.url, ["user:9"], wait=False)      # connects once b serves
    got_a: list = []
    got_b: list = []
    try:
        first = s.send_many([("user:9", b"%d" % i) for i in range(200)])
        _drain(on_a, got_a, set(first), 10)
        a.proc.send_signal(signal.SIGSTOP)
        paused = time.monotonic()
        for i in range(200, 400):   # into a's socket first, then b's after the failover
            s.send("user:9", b"%d" % i)
            s.poll(0.01)
        b.wait_for_log("leading with epoch", 15)
        assert time.monotonic() - paused > LEASE_MS / 1000
        woke = time.monotonic()
        a.proc.send_signal(signal.SIGCONT)
        assert a.proc.wait(10) == 3, a.log()              # EXIT_LEASE_LOST
        late = on_a.recv_many(1000, timeout=1.0)
        assert s.flush(20) == 0
        _drain(on_b, got_b, tally.accepted - {d.msg_id for d in got_a}, 20)
    finally:
        for c in (s, on_a, on_b):
            c.close()
    assert not late, f"the stale leader delivered {len(late)} after waking at {woke:.3f}"
    assert "lease lost" in a.log()
    assert len(tally.accepted) == 400
    _check_once_in_order(got_a, set())
    _check_once_in_order(got_b, tally.accepted - {d.msg_id for d in got_a})


@pytest.mark.long
def test_sentinel_promotes_the_replica_and_nothing_accepted_is_lost(tmp_path, routers):
    with RedisPair(tmp_path / "redis").start() as p, \
            Sentinels(tmp_path / "sentinels", p.primary.port).start() as sentinels:
        hosts = ",".join(f"{h}:{port}" for h, port in sentinels.addresses)
        store = f"redis-sentinel://{hosts}/{sentinels.master_name}"
        # A lease longer than Sentinel's failover, so the router rides it out.
        r = RouterProcess("--store", store, "--node-id", "a", "--lease-ms", "15000",
                          "--store-wait-ms", "500", "--history", "false")
        routers.append(r.start())
        tally = Tally()
        got: list = []
        with Sender(r.url, "orders", on_receipt=tally) as s, \
                Endpoint(r.url, ["merchant:1"]) as m:
            before = s.send_many([("merchant:1", b"before %d" % i) for i in range(1000)])
            assert s.flush(10) == 0
            old = p.primary.port
            p.primary.kill()
            during = []
            for i in range(30):        # 3 s of sends while Sentinel fails over
                during.append(s.send("merchant:1", b"during %d" % i))
                s.poll(0.1)
            sentinels.wait_for_failover(old, 30)
            p.primary.start()          # Sentinel makes it a replica of the new primary
            # Of whichever primary the sentinels name then: should they fail over once
            # more, the property under test (nothing accepted lost) still holds.
            sentinels.wait_for_replica([p.primary, p.replica], 60)
            after = s.send_many([("merchant:1", b"after %d" % i) for i in range(1000)])
            assert s.flush(20) == 0
            wait_until(lambda: (s.poll(0.1), len(tally.accepted) + len(tally.refused)
                                >= 2030)[1], 30, "a final receipt for every message")
            _drain(m, got, tally.accepted, 30)
        assert set(before) | set(after) <= tally.accepted, r.log()[-3000:]
        assert set(tally.refused.values()) <= {ErrorCode.STORAGE_FAILED}
        assert set(during) <= tally.accepted | set(tally.refused)
        _check_once_in_order(got, tally.accepted)


def _chaos(pair: RedisPair, kills: int, seed: int):
    # One node name: each restart takes its lease back at once, with a new epoch.
    return crash_loop(kills, seed, "--store", pair.primary.url, "--node-id", "chaos",
                      "--lease-ms", str(LEASE_MS), "--history", "false",
                      "--heartbeat-ms", "300", "--retry-ms", "300", "--retry-max-ms", "1000")


def test_sigkill_restarts_on_the_redis_store_lose_nothing_accepted(pair):
    assert len(_chaos(pair, 3, 1).accepted) > 200


@pytest.mark.long
def test_the_chaos_loop_of_20_sigkills_on_the_redis_store(pair):
    assert len(_chaos(pair, 20, 7).accepted) > 2000


def test_the_gateway_follows_the_standby_and_its_app_misses_nothing(pair, routers, tmp_path):
    a, b = _router(pair.primary.url, "a"), _router(pair.primary.url, "b")
    routers += [a.start(), b.start(wait=False)]
    b.wait_for_log("standby: a/", 10)
    both = SimpleNamespace(url=f"{a.url},{b.url}")
    with start_gateway(both, tmp_path) as (url, _, _), connect(url) as app, \
            Sender(both.url, "orders", resend_after=1.0) as s:
        app.send(json.dumps({"type": "hello", "token": token("user:7"), "last_seq": 0}))
        ids = s.send_many([("user:7", {"n": n}) for n in range(50)], kind="order.update")
        got = frames_until(app, 50, timeout=10, ack=True)
        a.kill()
        ids += s.send_many([("user:7", {"n": n}) for n in range(50, 100)],
                           kind="order.update")
        got += frames_until(app, 50, timeout=20, ack=True)
        assert s.flush(10) == 0
    assert [f["data"]["n"] for f in got] == list(range(100))
    assert [f["seq"] for f in got] == list(range(1, 101))


def _lease_gauges(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    return {s.name: s.value for fam in text_string_to_metric_families(text.decode())
            for s in fam.samples if s.name.startswith("router_lease_")}


def test_the_lease_is_exported_by_the_leader_and_the_standby(pair, routers):
    ports = free_port(), free_port()
    a = _router(pair.primary.url, "a", "--metrics-port", str(ports[0]))
    b = _router(pair.primary.url, "b", "--metrics-port", str(ports[1]))
    routers += [a.start(), b.start(wait=False)]
    b.wait_for_log("standby: a/", 10)
    leader = _lease_gauges(ports[0])
    assert leader["router_lease_leader"] == 1 and leader["router_lease_epoch"] == 1
    assert 0 < leader["router_lease_seconds_left"] <= LEASE_MS / 1000
    assert _lease_gauges(ports[1]) == {"router_lease_leader": 0, "router_lease_epoch": 0,
                                       "router_lease_seconds_left": 0}
    with pytest.raises(urllib.error.HTTPError, match="503"):   # a standby is not ready
        urllib.request.urlopen(f"http://127.0.0.1:{ports[1]}/readyz", timeout=5)
    a.kill()
    b.wait_for_log("leading with epoch 2", 10)
    wait_until(lambda: _lease_gauges(ports[1])["router_lease_leader"] == 1, 5, "b to lead")
    assert _lease_gauges(ports[1])["router_lease_epoch"] == 2


def test_finished_segments_are_trimmed_from_redis(pair, routers):
    # Small segments and a 1 s dedup window: once every message of a closed segment
    # is acked and the window passed, its key goes.
    r = _router(pair.primary.url, "a", "--segment-bytes", "4096", "--dedup-seconds", "1")
    routers.append(r.start())
    redis = pair.primary.client()
    with Sender(r.url, "orders") as s, Endpoint(r.url, ["merchant:1"]) as m:
        ids = []
        for _ in range(10):     # the router rolls between its 100 ms slices
            ids += s.send_many([("merchant:1", b"x" * 200) for _ in range(30)])
            assert s.flush(10) == 0
            time.sleep(0.15)
        rolled = redis.zcard("{router}:segs")
        assert rolled > 3, "200 messages of 200 B did not roll 4 KiB segments"
        got = _drain(m, [], set(ids), 10)
        m.flush()
        s.wait(ids[-1], Status.DELIVERED, timeout=10)
        wait_until(lambda: redis.zcard("{router}:segs") <= 2, 15, "finished segments trimmed")
    assert len(redis.keys("{router}:seg:*")) == redis.zcard("{router}:segs")
    _check_once_in_order(got, set(ids))
