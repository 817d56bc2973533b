"""The plan of a `router bench` run: modes, sizes, windows, the payload head."""

from __future__ import annotations

import dataclasses
import struct
import time

#: Payload head: send time (CLOCK_MONOTONIC ns), publisher number, message index.
HEAD = struct.Struct("<qII")
MIN_SIZE = HEAD.size
MODES = ("pub", "reliable", "request", "sub")
#: Messages a loop hands to the SDK before it looks at the clock.
BATCH = 64
#: Deliveries a receiver takes from the SDK at once.
RECV_BATCH = 1000
#: The service the bench's workers serve in request mode.
SERVICE = "bench.echo"
#: Entry point through which request mode finds its service worker class: router/ does
#: not import the application (workers/); pyproject.toml points this at ServiceWorker.
WORKER_GROUP = "order_router.bench"
#: Seconds the clients get to report their figures after Ctrl-C.
STOP_GRACE = 5.0
#: Requests a bench worker takes at once (READY credit).
WORKER_CREDIT = 8
#: Default --window: unconfirmed reliable messages, or outstanding requests, per publisher.
WINDOW = {"reliable": 1000, "request": 32}


class BenchError(Exception):
    """A run that cannot go on (a client could not connect, a process died): one line."""


@dataclasses.dataclass
class Plan:
    """Everything a run's processes need (pickled to each of them)."""

    mode: str
    url: str
    size: int = 200
    count: int = 100_000
    duration: float = 0.0
    rate: float = 0.0
    publishers: int = 1
    receivers: int = 1
    window: int = 0  # 0: WINDOW[mode]
    api: str = "blocking"
    tag: str = ""
    idle: float = 2.0
    timeout: float = 5.0
    service: str = SERVICE
    #: CURVE (an authenticated router): the router's public key file and this client's
    #: key pair, as router.client's Sender and Endpoint take them; None: open.
    server_key: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        self.window = self.window or WINDOW.get(self.mode, 1000)

    @property
    def reliable(self) -> bool:
        """Whether this run sends ORDER messages and waits for DELIVERED."""
        return self.mode == "reliable"

    def address(self, r: int) -> str:
        """Receiver ``r``'s address; the tag keeps a run from reading an earlier run's
        leftovers (a reliable message waits in the journal for its address)."""
        return f"bench:{self.tag}.{r}"

    def share(self, p: int) -> int:
        """Messages publisher ``p`` sends in a count run."""
        return self.count // self.publishers + (1 if p < self.count % self.publishers else 0)

    def keys(self) -> dict:
        """The CURVE options of every client of the run (none for an open router)."""
        return {"server_key": self.server_key, "key": self.key}

    def targets(self) -> list[str]:
        """Every receiver's address, in order."""
        return [self.address(r) for r in range(max(self.receivers, 1))]


def payload(size: int, pub: int, i: int, pad: bytes) -> bytes:
    """A bench message: HEAD (now, publisher, index) then ``size - HEAD.size`` bytes."""
    return HEAD.pack(time.monotonic_ns(), pub, i & 0xFFFFFFFF) + pad
