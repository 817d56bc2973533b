"""How long the router's reclaim step takes when many addresses go idle at once.

``python -m benchmarks reclaim-step N [--realtime]``: a router with
``--address-idle-seconds 2``; one gateway connection binds N addresses and unbinds
them; then the router's ``router_reclaim_step_max_seconds`` (the longest reclaim step of
a loop tick since the previous metrics snapshot) is read every 0.3 s until the table is
empty. ``--realtime`` gives the router's threads SCHED_FIFO priority (root only), so
that other work on a shared machine cannot preempt it in the middle of a step and the
figure is the step's own cost.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import Peer, RouterProcess, free_port  # noqa: E402

from router import protocol as P  # noqa: E402


def scrape(port: int, name: str) -> float:
    """One unlabelled series from the router's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return float(next(line.split()[-1] for line in text.splitlines()
                      if line.startswith(name + " ")))


def run(n: int, realtime: bool) -> tuple[float, float]:
    """(seconds to reclaim all, longest reclaim step in seconds)."""
    port = free_port()
    router = RouterProcess("--address-idle-seconds", "2", "--metrics-port", str(port)).start()
    try:
        if realtime:
            for task in os.listdir(f"/proc/{router.pid}/task"):
                subprocess.run(["chrt", "-f", "-p", "10", task], check=True)
        with Peer(router.url) as gateway:
            gateway.hello(P.Role.GATEWAY, "gateway")
            for start in range(0, n, 20000):
                names = [f"user:{i}" for i in range(start, min(n, start + 20000))]
                gateway.send(P.encode_bind([(name, 0) for name in names]))
                gateway.send(P.encode_unbind(names))
            time.sleep(1)
            t0, peak = time.monotonic(), 0.0
            while time.monotonic() - t0 < 60 and scrape(port, "router_addresses") > 0:
                peak = max(peak, scrape(port, "router_reclaim_step_max_seconds"))
                time.sleep(0.3)
            return time.monotonic() - t0, peak
    finally:
        router.stop()


def main(argv: list[str] | None = None) -> int:
    """Run once and print the figures."""
    argv = sys.argv[1:] if argv is None else argv
    count = int(next((a for a in argv if a.isdigit()), 100_000))
    took, step = run(count, "--realtime" in argv)
    print(f"{count} addresses reclaimed in {took:.1f} s; longest reclaim step "
          f"{step * 1000:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
