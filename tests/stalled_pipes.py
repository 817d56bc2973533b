"""Peers that fill their pipe into a ROUTER, then hang up: the pattern that aborts
libzmq 4.3.5 when ZMTP heartbeats run on the ROUTER socket (tests/test_hostile.py).

``python tests/stalled_pipes.py ENDPOINT HEARTBEAT_MS SECONDS`` runs a bare ROUTER
(RCVHWM 10) that reads only a little now and then, so that every connection's input
stops at its high-water mark; it prints ``survived`` and exits 0 if libzmq did not
abort. :func:`flood_and_hang_up` is the other side."""

from __future__ import annotations

import sys
import time

import zmq


def flood_and_hang_up(endpoint: str, seconds: float, connections: int = 10,
                      per_connection: int = 200) -> int:
    """Open ``connections`` DEALERs, queue ``per_connection`` messages on each (far
    above the ROUTER's RCVHWM), close them all, and repeat for ``seconds``; returns
    how many rounds ran."""
    ctx = zmq.Context()
    rounds = 0
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            socks = []
            for _ in range(connections):
                d = ctx.socket(zmq.DEALER)
                d.setsockopt(zmq.LINGER, 0)
                d.connect(endpoint)
                socks.append(d)
            for _ in range(per_connection):
                for d in socks:
                    try:
                        d.send(b"\x00" * 100, zmq.DONTWAIT)
                    except zmq.Again:
                        pass
            time.sleep(0.2)
            for d in socks:
                d.close()
            rounds += 1
    finally:
        ctx.term()
    return rounds


def slow_router(endpoint: str, heartbeat_ms: int, seconds: float) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 10)
    if heartbeat_ms:
        sock.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ms)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, heartbeat_ms * 3)
    sock.bind(endpoint)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.5)  # not reading: each pipe fills and its input stops
        for _ in range(5):  # a few reads restart input now and then
            try:
                sock.recv_multipart(zmq.DONTWAIT)
            except zmq.Again:
                break
    sock.close()
    ctx.term()
    print("survived", flush=True)


if __name__ == "__main__":
    slow_router(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
