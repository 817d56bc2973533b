"""Reproduce: messages of a sender that disconnects while they are still queued at a
ROUTER_MANDATORY socket go missing once the ROUTER sends to that sender's identity.

    python benchmarks/repro_departed_sender.py [--trials 4] [--count 150000]

No router involved: one ROUTER (ROUTER_MANDATORY, RCVHWM 100000) and one DEALER in this
process over TCP. The DEALER sends ``count`` 200-byte messages and closes (linger -1);
the ROUTER then reads everything that arrives. In "probe" trials the ROUTER also sends a
frame to the DEALER's identity every 1,000 messages read (as the router's heartbeat
does) until that fails with EHOSTUNREACH. Seen on pyzmq 27.3 / libzmq 4.3.5: without
probes every message is read; with probes EHOSTUNREACH comes while messages are still
queued, and in some trials part of them is never read.

This is why ``hop.py`` offers ``--sender-hold``: see benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time

import zmq


def trial(count: int, probe: bool) -> tuple[int, int | None]:
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--count", type=int, default=150_000)
    args = parser.parse_args(argv)
    lost_any = False
    for i in range(args.trials):
        for probe in (False, True):
            got, at = trial(args.count, probe)
            lost_any |= got != args.count
            print(f"trial {i} probe={probe!s:5}: read {got:,} of {args.count:,}"
                  + (f", EHOSTUNREACH after {at:,} read" if at is not None else ""))
    return 1 if lost_any else 0


if __name__ == "__main__":
    sys.exit(main())
