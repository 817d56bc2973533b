"""python -m benchmarks COMMAND [OPTIONS]: every benchmark of the project.

    python -m benchmarks hop -h          # options of one command
    python -m benchmarks hop -s throughput -n 200000
    python -m benchmarks durability --repeat 3 --markdown benchmarks/RESULTS-durability.md
"""

from __future__ import annotations

import importlib
import sys

#: command -> (module with main(argv), what it does). Imported only when chosen, so that
#: ``build`` works before anything is built and ``scoring`` needs no libzmq.
COMMANDS = {
    "hop": ("benchmarks.hop.command",
            "the core message path: router vs bare proxy vs pure-Python loop"),
    "durability": ("benchmarks.durability.command",
                   "journal, backlog resume and metrics endpoint costs"),
    "sdk": ("benchmarks.sdk.command",
            "the users' benchmark: this SDK vs nats-py (core, JetStream) and redis-py"),
    "scoring": ("benchmarks.scoring", "dispatch decisions/s and quality against greedy"),
    "dispatch-quality": ("benchmarks.dispatch_quality", "batched dispatch against three "
                         "baselines, 3 seeds x 4 loads, in the delivery simulation"),
    "repro-departed-sender": ("benchmarks.repro_departed_sender",
                              "the departed-sender loss, without the router"),
    "soak": ("benchmarks.soak", "a compressed week of address churn: RSS, tables, p99, loss"),
    "reclaim-step": ("benchmarks.reclaim_step",
                     "the longest reclaim step when many addresses go idle at once"),
    "latency-spread": ("benchmarks.latency.spread",
                       "run the latency suite N times: spread of each benchmark's median"),
    "handshake": ("benchmarks.handshake",
                  "what CURVE + ZAP costs a connection: one at a time, and 1,000 at once"),
    "gateway": ("benchmarks.gateway",
                "the WebSocket gateway: memory per idle connection, e2e latency to apps"),
    "city": ("benchmarks.city",
             "the lunch peak of a large city: 100k addresses, orders, offers, positions"),
    "curve-frames": ("benchmarks.curve_frames",
                     "what CURVE costs libzmq per frame and per byte: a bare proxy, 3 shapes"),
    "zap-handshake": ("benchmarks.zap_handshake",
                      "the ZAP handler alone: CURVE ROUTER + handler, raw DEALERs"),
    "build": ("benchmarks.drivers.build", "build the native load drivers (loadgen)"),
}


def usage() -> str:
    """The command list."""
    width = max(map(len, COMMANDS))
    lines = [__doc__.strip(), "", "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``COMMAND``'s main with the remaining arguments."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
