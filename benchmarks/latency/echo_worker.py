"""``python -m benchmarks.latency.echo_worker URL SERVICE``: a ServiceWorker process that
answers every request with its payload, for the request/reply latency benchmarks.

Prints ``ready`` on stdout once connected (WELCOME seen, READY queued), then serves
until SIGTERM.
"""

from __future__ import annotations

import signal
import sys

from workers.service import ServiceWorker


def main(argv: list[str]) -> int:
    url, service = argv
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    with ServiceWorker(url, service, lambda payload: payload, name="bench-echo") as worker:
        print("ready", flush=True)
        worker.run(should_stop=lambda: bool(stopping))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
