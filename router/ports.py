"""Choosing a loopback TCP port for a process about to be started.

The usual trick (bind port 0, read the port, close, hand the number on) races: between
the close and the child's bind, any outgoing connection on the machine may be given that
very port as its source, since port 0 draws from the kernel's ephemeral range. The demo,
the benchmarks and the tests start several listeners at once while connecting to others,
so they hit it. The ports chosen here lie below the ephemeral range, which the kernel
never hands out on its own, and are checked free by binding them.
"""

from __future__ import annotations

import errno
import random
import socket
from collections import deque

#: the lowest port chosen: above the usual fixed service ports (Redis, Prometheus, ...)
LOWEST = 20000
_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
_ATTEMPTS = 500
#: ports this process handed out lately, not handed out again before their child binds
_recent: deque[int] = deque(maxlen=4096)
#: its own generator: a program seeding `random` must not make processes agree on ports
_rng = random.Random()


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 when it cannot be read)."""
    try:
        with open(_RANGE_FILE) as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _kernel_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing is bound to now and that no outgoing
    connection will take before a process binds it.

    Falls back to the kernel's choice (port 0) when the ephemeral range starts too low
    to leave room below it.
    """
    low, high = LOWEST, _ephemeral_low()
    if high - low < 1000:
        return _kernel_port(host)
    for _ in range(_ATTEMPTS):
        port = _rng.randrange(low, high)
        if port not in _recent and _bindable(host, port):
            _recent.append(port)
            return port
    raise OSError(errno.EADDRINUSE, f"no free TCP port on {host} in {low}-{high - 1}")
