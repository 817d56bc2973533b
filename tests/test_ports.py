"""router/ports.py: the ports handed to children lie outside the kernel's ephemeral
range (no outgoing connection can take one before the child binds it), are free, and
one process never hands out the same port twice in a row of starts."""

from __future__ import annotations

import socket

from router import ports


def test_ports_are_free_distinct_and_below_the_ephemeral_range():
    low = ports._ephemeral_low()
    chosen = [ports.free_port() for _ in range(200)]
    assert len(set(chosen)) == len(chosen)
    assert all(ports.LOWEST <= p < low for p in chosen), (low, min(chosen), max(chosen))
    with socket.socket() as s:  # free means a listener can take it
        s.bind(("127.0.0.1", chosen[-1]))
        s.listen()


def test_a_port_in_use_is_not_chosen():
    held = []
    try:
        for _ in range(50):
            s = socket.socket()
            s.bind(("127.0.0.1", ports.free_port()))
            s.listen()
            held.append(s)
        busy = {s.getsockname()[1] for s in held}
        ports._recent.clear()  # only the bind check stands between a busy port and reuse
        assert not busy & {ports.free_port() for _ in range(300)}
    finally:
        for s in held:
            s.close()
