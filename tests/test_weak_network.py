"""Endpoints on a mobile network: delay with jitter, bandwidth caps, stalls, resets and
an outage, through the user-space fault proxy (tests/netem.py). Every reliable message
must arrive, in order, once; delivery latency percentiles are printed for the record."""

from __future__ import annotations

import time

import pytest

from netem import MOBILE_PROFILE, FaultProxy
from support import RouterProcess, Traffic

ROUTER_ARGS = ("--heartbeat-ms", "1000", "--liveness", "5", "--retry-ms", "1000",
               "--retry-max-ms", "4000", "--max-attempts", "0")


def percentiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    pick = lambda q: xs[min(int(q * len(xs)), len(xs) - 1)]  # noqa: E731
    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "max": xs[-1]}


def run_weak_network(time_scale: float, outage_s: float, phase_s: float) -> dict:
    router = RouterProcess(*ROUTER_ARGS).start()
    try:
        with FaultProxy(router.url, time_scale=time_scale, seed=3) as net:
            net.set_delay(MOBILE_PROFILE)
            traffic = Traffic(router.url, [f"rider:{i}" for i in range(6)], rate=150,
                              endpoint_url=net.url).start()
            time.sleep(phase_s)                       # mobile delay and jitter
            net.set_bandwidth(20_000, direction="down")  # a weak cell: 20 kB/s
            time.sleep(phase_s)
            net.set_bandwidth(None)
            net.stall()                               # a lift: bytes stop, link stays up
            time.sleep(phase_s)
            net.unstall()
            time.sleep(phase_s)
            net.reset_all()                           # the radio drops the connection
            time.sleep(phase_s)
            net.outage(outage_s)                      # a basement kitchen
            time.sleep(outage_s + phase_s)
            traffic.finish(timeout=90)
            traffic.check()
            stats = percentiles(traffic.latencies)
            stats["messages"] = len(traffic.accepted)
            stats["duplicates_dropped_by_sdk"] = traffic.duplicates
            counters = net.counters
        print(f"\nweak network (time scale {time_scale}, outage {outage_s}s): "
              f"{stats['messages']} messages, delivery latency "
              f"p50 {stats['p50']:.3f}s p95 {stats['p95']:.3f}s p99 {stats['p99']:.3f}s "
              f"max {stats['max']:.3f}s, redelivered copies dropped by the SDK "
              f"{stats['duplicates_dropped_by_sdk']}, proxy resets {counters.resets}")
        return stats
    finally:
        router.stop()


@pytest.mark.long   # 16 s: keeps the default suite (README's command) well under 10 min
def test_weak_network_compressed():
    """The whole fault sequence with delays at 1/5 and a 3 s outage (about 20 s)."""
    stats = run_weak_network(time_scale=0.2, outage_s=3.0, phase_s=2.0)
    assert stats["messages"] > 1500


@pytest.mark.long
def test_weak_network_real_time_with_30s_outage():
    """Mobile delays at full scale and a 30 s outage, then recovery."""
    stats = run_weak_network(time_scale=1.0, outage_s=30.0, phase_s=5.0)
    assert stats["messages"] > 8000
