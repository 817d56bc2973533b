"""Helpers the test modules share (no test module imports another): receiving a known
number of deliveries, reading a refusal, and a steady reliable traffic generator."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from router import protocol as P
from router.client import Endpoint, Sender
from router.protocol import Command, ErrorCode, MsgClass, Role, Status

from conftest import Peer


def drain(ep: Endpoint, n: int, timeout: float = 5.0, ack: bool = True) -> list:
    """Receive exactly ``n`` deliveries within ``timeout`` (fails otherwise)."""
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"got {len(out)} of {n} deliveries in {timeout}s"
        d = ep.recv(timeout=left)
        if d is not None:
            out.append(d)
            if ack:
                ep.ack(d)
    ep.flush()
    return out


def refusal_of(peer: Peer) -> tuple[list[P.Receipt], tuple[ErrorCode, int, str]]:
    """A refused SEND yields a REFUSED receipt and an ERROR, in either order."""
    got = {}
    while len(got) < 2:
        frames = peer.recv(timeout=2.0)
        assert frames is not None, f"got only {list(got)}"
        got.setdefault(frames[0][2], frames)
    err = got[Command.ERROR]
    return P.decode_receipts(got[Command.RECEIPT][0]), P.decode_error(err[0], err[1])


class Traffic:
    """A sender thread pushing numbered reliable messages round-robin to addresses, and
    a gateway thread consuming and acking them; records what was accepted and got."""

    def __init__(self, url: str, addresses: list[str], rate: float = 400.0,
                 endpoint_url: str | None = None) -> None:
        self.url, self.addresses, self.rate = url, addresses, rate
        self.endpoint_url = endpoint_url or url
        self.accepted: dict[int, tuple[str, int]] = {}
        self.sent: dict[int, tuple[str, int]] = {}
        self.got: dict[str, list[int]] = defaultdict(list)
        self.latencies: list[float] = []
        self.stop_sending = threading.Event()
        self.settled = threading.Event()  # the sender has no unconfirmed message left
        self.stop_all = threading.Event()
        self.errors: list[BaseException] = []
        self.duplicates = 0
        self.threads = [threading.Thread(target=self._guard, args=(f,)) for f in
                        (self._produce, self._consume)]

    def _guard(self, fn) -> None:
        try:
            fn()
        except BaseException as exc:  # surfaced by finish()
            self.errors.append(exc)

    def _on_receipt(self, r: P.Receipt) -> None:
        if r.status in (Status.ACCEPTED, Status.DELIVERED) and r.msg_id in self.sent:
            self.accepted[r.msg_id] = self.sent[r.msg_id]

    def _produce(self) -> None:
        with Sender(self.url, "orders", on_receipt=self._on_receipt, resend_after=1.0,
                    timeout=20) as s:
            n, next_at = 0, time.monotonic()
            while not self.stop_sending.is_set():
                addr = self.addresses[n % len(self.addresses)]
                mid = s.send(addr, f"{n}|{time.time()}", msg_class=MsgClass.ORDER)
                self.sent[mid] = (addr, n)
                n += 1
                next_at += 1.0 / self.rate
                while (left := next_at - time.monotonic()) > 0:  # paced, receipts in between
                    s.poll(left)
            deadline = time.monotonic() + 60
            while s.session.unconfirmed and time.monotonic() < deadline:
                s.poll(0.05)
            self.settled.set()
            while not self.stop_all.is_set():
                s.poll(0.05)

    def _consume(self) -> None:
        with Endpoint(self.endpoint_url, self.addresses, role=Role.GATEWAY, name="gw",
                      timeout=20) as ep:
            while not self.stop_all.is_set():
                d = ep.recv(timeout=0.05)
                if d is None:
                    continue
                n, sent_at = d.payload.decode().split("|")
                self.got[d.address].append(int(n))
                self.latencies.append(time.time() - float(sent_at))
                ep.ack(d)
            self.duplicates = ep.duplicates

    def start(self) -> "Traffic":
        for t in self.threads:
            t.start()
        return self

    def delivered(self) -> set[tuple[str, int]]:
        return {(a, n) for a, ns in self.got.items() for n in ns}

    def finish(self, timeout: float = 60.0) -> None:
        """Stop sending, wait until everything accepted was delivered, stop."""
        self.stop_sending.set()
        deadline = time.monotonic() + timeout
        self.settled.wait(timeout)
        while time.monotonic() < deadline:
            if set(self.accepted.values()) <= self.delivered() or self.errors:
                break
            time.sleep(0.1)
        self.stop_all.set()
        for t in self.threads:
            t.join(30)
        if self.errors:
            raise self.errors[0]

    def check(self) -> None:
        """Every accepted message delivered exactly once, in order per address."""
        assert self.accepted, "nothing was accepted"
        missing = set(self.accepted.values()) - self.delivered()
        assert not missing, f"{len(missing)} accepted messages never delivered: {sorted(missing)[:10]}"
        for addr, ns in self.got.items():
            assert len(ns) == len(set(ns)), f"{addr}: duplicates at the application"
            assert ns == sorted(ns), f"{addr}: out of order: {ns[:50]}"
