"""Full-speed fuzzing peers in their own processes beside one well-behaved pair, with
what the pair saw and what the router held measured (tests/test_hostile.py runs it).

Run by hand: ``python tests/hostile_load.py [SECONDS] [PROCESSES] [CONNECTIONS]
[--shared] [--uncontained]`` (``--shared``: connections that claim one routing id;
``--uncontained``: fuzzers and router on all CPUs, see :func:`split_cpus`)."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import RouterProcess, free_port  # noqa: E402
from test_fuzz import fuzz, fuzz_shared_id  # noqa: E402

from router.client import Endpoint, Sender  # noqa: E402
from router.protocol import Status  # noqa: E402

GOOD_ADDRESS = "merchant:well-behaved"


def fuzz_processes(url: str, seed: int, connections: int, seconds: float,
                  shared: bool, cpus: set[int] | None = None) -> None:
    """One process's fuzzing connections (threads) for ``seconds``, on ``cpus`` if
    given."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    stop = threading.Event()
    counts = [0]
    target = fuzz_shared_id if shared else fuzz
    threads = [threading.Thread(target=target, args=(url, seed * 100 + i, stop, counts),
                                daemon=True) for i in range(connections)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(10)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pin(pid: int, cpus: set[int]) -> None:
    """Move every thread of process ``pid`` (libzmq's I/O thread too) onto ``cpus``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def split_cpus() -> tuple[set[int], set[int]] | None:
    """(the router's CPUs, the fuzzers' CPUs), or None on a one-CPU machine.

    The attackers of a production router run on other machines: what they can do to it
    is send bytes, not take its CPU. On a 2-core box four busy fuzzer processes would
    otherwise get four fifths of the CPU from the kernel's scheduler and leave the
    router's loop about 9% of one core (measured): the run would test the scheduler.
    So the fuzzers share one core, still sending as fast as it lets them, and the router
    has the other."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


def peers(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("router_peers{"))


@dataclass
class Result:
    sent: int = 0
    answered: int = 0
    delivered: int = 0  # distinct messages the endpoint got
    duplicates: int = 0  # ... and repeats handed to it again
    latencies: list[float] = field(default_factory=list)
    longest_silence: float = 0.0
    rss_start: float = 0.0
    rss_peak: float = 0.0
    rss_after: float = 0.0
    peers_after: float = 0.0
    peers_1hb: float = -1.0  # peers one heartbeat after the fuzzers left (the pair: 2)
    router_alive: bool = True
    router_log: str = ""  # the end of the router's output, when it died

    def p99(self) -> float:
        xs = sorted(self.latencies)
        return xs[min(int(0.99 * len(xs)), len(xs) - 1)] if xs else float("inf")

    def line(self) -> str:
        return (f"well-behaved pair: {self.sent} sent, {self.answered} answered, "
                f"{self.delivered} delivered ({self.duplicates} repeats), "
                f"p99 {self.p99() * 1000:.0f} ms, longest "
                f"silence {self.longest_silence:.2f} s; router RSS {self.rss_start:.0f} -> "
                f"peak {self.rss_peak:.0f} -> {self.rss_after:.0f} MB 30 s after; peers "
                f"{self.peers_1hb:.0f} one heartbeat after the fuzz, "
                f"{self.peers_after:.0f} at the end; alive {self.router_alive}")


def run(seconds: float, processes: int = 4, connections: int = 6, rate: float = 100,
        shared: bool = False, settle: float = 30.0, contain: bool = True) -> Result:
    """Fuzz for ``seconds`` while the pair sends ``rate`` reliable orders a second;
    with ``contain``, the router and the fuzzers on separate cores (:func:`split_cpus`)."""
    port = int(os.environ.get("HOSTILE_METRICS_PORT") or free_port())
    extra = os.environ.get("HOSTILE_ROUTER_ARGS", "").split()  # to compare settings
    router = RouterProcess("--metrics-port", str(port), "--max-queue", "2000",
                           "--max-queued-per-sender", "20000", *extra).start()
    split = split_cpus() if contain else None
    if split:
        pin(router.pid, split[0])
    res = Result(rss_start=rss_mb(router.pid))
    sent_at: dict[int, float] = {}
    stop = threading.Event()
    last_delivery = [time.monotonic()]
    sending = threading.Event()

    def on_receipt(r) -> None:
        if r.status == Status.DELIVERED and r.msg_id in sent_at:
            res.latencies.append(time.monotonic() - sent_at.pop(r.msg_id))
            res.answered += 1
        elif r.status in (Status.REFUSED, Status.EXPIRED, Status.FAILED) and r.msg_id in sent_at:
            sent_at.pop(r.msg_id)
            res.answered += 1

    seen: set[int] = set()

    def consume() -> None:
        with Endpoint(router.url, [GOOD_ADDRESS], name="good-merchant") as ep:
            while not stop.is_set():
                d = ep.recv(timeout=0.05)
                now = time.monotonic()
                if sending.is_set():  # silence counts only while orders are being sent
                    res.longest_silence = max(res.longest_silence, now - last_delivery[0])
                if d is None:
                    continue
                last_delivery[0] = now
                if d.msg_id in seen:
                    res.duplicates += 1
                else:
                    seen.add(d.msg_id)
                    res.delivered += 1
                ep.ack(d)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    ctx = mp.get_context("spawn")
    fuzzers = [ctx.Process(target=fuzz_processes,
                           args=(router.url, 1 + i, connections, seconds, shared,
                                 split[1] if split else None))
               for i in range(processes)]
    try:
        with Sender(router.url, "good-orders", on_receipt=on_receipt) as s:
            time.sleep(0.5)
            last_delivery[0] = time.monotonic()
            sending.set()
            for p in fuzzers:
                p.start()
            end = time.monotonic() + seconds
            next_at = time.monotonic()
            while time.monotonic() < end:
                sent_at[s.send(GOOD_ADDRESS, {"n": res.sent})] = time.monotonic()
                res.sent += 1
                next_at += 1 / rate
                while (left := next_at - time.monotonic()) > 0:
                    s.poll(left)
                res.rss_peak = max(res.rss_peak, rss_mb(router.pid))
            sending.clear()
            for p in fuzzers:
                p.join(30)
            # One heartbeat (1 s) and a metrics refresh later the table holds the pair only.
            time.sleep(1.6)
            res.peers_1hb = peers(port)
            # The backlog the fuzzers left is read first (round-robin): wait for every
            # send's answer, bounded.
            deadline = time.monotonic() + 120
            while sent_at and time.monotonic() < deadline:
                s.poll(0.1)
        stop.set()
        consumer.join(10)
        time.sleep(settle)
        res.router_alive = router.proc.poll() is None
        if not res.router_alive:
            res.router_log = router.log()[-4000:]
        if res.router_alive:
            res.rss_after = rss_mb(router.pid)
            res.peers_after = peers(port)
        return res
    finally:
        stop.set()
        for p in fuzzers:
            if p.is_alive():
                p.kill()
        router.stop()


if __name__ == "__main__":
    flags = {a for a in sys.argv[1:] if a.startswith("--")}
    args = [float(a) for a in sys.argv[1:] if not a.startswith("--")]
    r = run(args[0] if args else 60, int(args[1]) if len(args) > 1 else 4,
            int(args[2]) if len(args) > 2 else 6, shared="--shared" in flags,
            contain="--uncontained" not in flags)
    print(r.line())
    if r.router_log:
        print(r.router_log)
