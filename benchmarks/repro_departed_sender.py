"""Reproduce: messages of a sender that disconnects while they are still queued at a
ROUTER_MANDATORY socket go missing once the ROUTER sends to that sender's identity.

    python -m benchmarks repro-departed-sender [--trials 4] [--count 150000]

No router involved: one ROUTER (ROUTER_MANDATORY, RCVHWM 100000) and one DEALER in this
process over TCP. The DEALER sends ``count`` 200-byte messages and closes (linger -1);
the ROUTER then reads everything that arrives. In "probe" trials the ROUTER also sends a
frame to the DEALER's identity every 1,000 messages read (as the router's heartbeat
does) until that fails with EHOSTUNREACH. Seen on pyzmq 27.3 / libzmq 4.3.5: without
probes every message is read; with probes EHOSTUNREACH comes while messages are still
queued, and in some trials part of them is never read.

This is why ``python -m benchmarks hop`` offers ``--sender-hold``: see benchmarks/RESULTS.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import zmq

from benchmarks.harness.options import option, parse_options


@dataclass
class ReproOptions:
    """Options of ``python -m benchmarks repro-departed-sender``."""

    trials: int = option(4, "trials, each without and with probes")
    count: int = option(150_000, "messages the DEALER sends per trial")


def trial(count: int, probe: bool) -> tuple[int, int | None]:
    """Messages read of ``count`` sent, and after how many EHOSTUNREACH came (probes)."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.rcvhwm = 100_000
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, b"sender")
    dealer.sndhwm = 100_000
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(b"hello")
    router.recv_multipart()
    payload = b"x" * 200
    for _ in range(count):
        dealer.send(payload)
    dealer.close(linger=-1)
    time.sleep(1.0)  # the disconnect is seen while most messages are still queued
    got, unreachable_at = 0, None
    while True:
        if probe and unreachable_at is None and got % 1000 == 0:
            try:
                router.send_multipart([b"sender", b"ping"], flags=zmq.DONTWAIT)
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EHOSTUNREACH:
                    unreachable_at = got
        if not router.poll(1000):
            break
        router.recv_multipart()
        got += 1
    router.close(0)
    ctx.term()
    return got, unreachable_at


def main(argv: list[str] | None = None) -> int:
    """Run the trials; 1 if any message went missing."""
    args = parse_options(ReproOptions, argv, prog="python -m benchmarks repro-departed-sender",
                         doc=__doc__)
    lost_any = False
    for i in range(args.trials):
        for probe in (False, True):
            got, at = trial(args.count, probe)
            lost_any |= got != args.count
            print(f"trial {i} probe={probe!s:5}: read {got:,} of {args.count:,}"
                  + (f", EHOSTUNREACH after {at:,} read" if at is not None else ""))
    return 1 if lost_any else 0
