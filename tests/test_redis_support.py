"""The Redis test harness (redis_support.py) against real redis-server and redis-sentinel
processes: a pair replicates and refuses writes without its replica; sentinels fail over
to the replica when the primary dies (long)."""

from __future__ import annotations

import pytest

redis = pytest.importorskip("redis", reason="redis-py not installed: pip install -e '.[test]'")

from redis_support import HOST, RedisPair, Sentinels, missing_programs, stop_all
from support import wait_until

MISSING = missing_programs()
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"{', '.join(MISSING)} not installed "
                                f"(apt-get install {' '.join(MISSING)})")


@pytest.fixture(autouse=True)
def no_server_left():
    """Stop whatever a test started and did not stop (a with block stops its own)."""
    yield
    stop_all()


def write_refusal(client: redis.Redis) -> redis.ResponseError | None:
    """The error a write gets, or None if the write was accepted."""
    try:
        client.set("order:2", "placed")
    except redis.ResponseError as exc:
        return exc
    return None


def test_pair_replicates_and_refuses_writes_without_its_replica(tmp_path):
    with RedisPair(tmp_path) as pair:
        primary = pair.primary.client(decode_responses=True)
        primary.set("order:1", "placed")
        assert primary.wait(1, 1000) == 1
        assert pair.replica.client(decode_responses=True).get("order:1") == "placed"

        pair.replica.kill()
        refusal = wait_until(lambda: write_refusal(primary), 5,
                             "the primary to refuse a write without its replica")
        assert str(refusal).startswith("NOREPLICAS"), refusal


@pytest.mark.long
def test_sentinels_fail_over_to_the_replica(tmp_path):
    with RedisPair(tmp_path / "pair") as pair, \
            Sentinels(tmp_path / "sentinels", pair.primary.port) as sentinels:
        assert sentinels.primary() == (HOST, pair.primary.port)
        primary = pair.primary.client(decode_responses=True)
        primary.set("order:1", "placed")
        assert primary.wait(1, 1000) == 1

        pair.primary.kill()
        assert sentinels.wait_for_failover(pair.primary.port, timeout=20) \
            == (HOST, pair.replica.port)
        promoted = pair.replica.client(decode_responses=True)
        assert promoted.info("replication")["role"] == "master"
        assert promoted.get("order:1") == "placed"
