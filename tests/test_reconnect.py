"""Reconnects on weak links: one HELLO per new connection, and after it only what lies
above the cursor (no burst of queued HELLOs, no window redelivered per HELLO)."""

from __future__ import annotations

import time

import pytest

from netem import FaultProxy
from support import RouterProcess, Traffic

WINDOW = 256
ARGS = ("--heartbeat-ms", "1000", "--liveness", "3", "--window", str(WINDOW),
        "--retry-ms", "1000", "--retry-max-ms", "4000", "--max-attempts", "0")


def outage_and_stall(outage_s: float, stall_s: float) -> None:
    router = RouterProcess(*ARGS).start()
    try:
        with FaultProxy(router.url, seed=5) as net:
            traffic = Traffic(router.url, [f"rider:{i}" for i in range(3)], rate=200,
                              endpoint_url=net.url).start()
            time.sleep(2)
            net.outage(outage_s)        # a basement: connections reset and refused
            time.sleep(outage_s + 3)
            net.stall()                 # a lift: the link stays up, bytes stop
            time.sleep(stall_s)
            net.unstall()
            time.sleep(3)
            traffic.finish(timeout=60)
            traffic.check()
            c = net.counters
        established = c.accepted - c.refused
        hellos = router.log().count("peer connected: gw (")
        print(f"\n{outage_s:.0f} s outage + {stall_s:.0f} s stall: {established} connections, "
              f"{hellos} HELLOs, {traffic.duplicates} repeats dropped by the SDK, "
              f"{len(traffic.accepted)} messages")
        assert hellos <= established, f"{hellos} HELLOs on {established} connections"
        # each reconnect may resend at most the window that was in flight
        assert traffic.duplicates <= WINDOW * max(established - 1, 1), traffic.duplicates
    finally:
        router.stop()


@pytest.mark.long   # 22 s; the default suite's reconnects are test_engine's restarts
def test_reconnects_send_one_hello_each():
    outage_and_stall(outage_s=8, stall_s=6)


@pytest.mark.long
@pytest.mark.timeout(300)
def test_a_minute_long_outage_sends_one_hello_per_reconnect():
    outage_and_stall(outage_s=60, stall_s=20)
