"""The `router bench` subcommand's arguments (the `router` command adds them)."""

from __future__ import annotations

import argparse

from .. import argtypes, config
from ..client_commands import add_key_flags
from .plan import MODES


def add_parser(sub) -> None:
    """Add `bench` to the `router` command's subparsers ``sub``."""

    p = sub.add_parser(
        "bench", help="load a running router through this SDK and report msg/s, CPU and "
        "latency", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Start publisher and receiver processes (each its own SDK client),\n"
        "point them at a running router and report what a user gets: delivered msg/s\n"
        "and MB/s, CPU per message on each side, latency p50/p99/p99.9 (the send time\n"
        "travels in the payload). A progress line goes to stderr every second, the\n"
        "table to stdout.",
        epilog="""modes:
  pub       best effort (NOTICE); delivered, and lost if the router dropped any
  reliable  ORDER: receivers ack, publishers wait for DELIVERED receipts (--window)
  request   request/reply: --receivers service workers echo the payload; latency is
            the round trip, --window requests outstanding per publisher
  sub       receivers only, for a `pub`/`reliable` run elsewhere with the same --tag
            and --receivers 0 (it sends to bench:<tag>.0); stops after --count
            messages or --duration seconds (latency needs both on this machine)

Ctrl-C stops the clients and prints the figures measured so far (exit 130). Exit 1
when a reliable message or a request was not confirmed.

examples:
  router bench pub --count 200000
  router bench reliable --publishers 2 --receivers 2 --duration 10 --rate 20000
  router bench request --receivers 2 --window 32 --json
  router bench pub --server-key certs/router.key --key certs/bench.key_secret
            (an authenticated router: every client presents that key; its principal
            must allow the names bench-* and the addresses bench:*, docs/SECURITY.md)""")
    p.add_argument("mode", choices=MODES, help="what to measure (see below)")
    p.add_argument("--url", "--router", dest="router", default=config.DEFAULT_BIND,
                   type=argtypes.endpoints, metavar="ENDPOINT",
                   help="the router's endpoint (default %(default)s)")
    p.add_argument("--size", type=argtypes.int_in(16, 256 << 20, " bytes"), default=200,
                   metavar="BYTES", help="payload bytes per message, 16 or more "
                   "(default %(default)s)")
    p.add_argument("--count", "-n", type=argtypes.int_in(1, 2**40), default=100_000, metavar="N",
                   help="messages in all publishers together (default %(default)s); "
                   "ignored with --duration")
    p.add_argument("--duration", type=argtypes.seconds, default=0.0, metavar="SECONDS",
                   help="send for this long instead of --count messages")
    p.add_argument("--rate", type=argtypes.int_in(0, 10**9, " msg/s"), default=0, metavar="MSG_S",
                   help="offered rate of all publishers together, paced open loop "
                   "(default 0 = as fast as they can)")
    p.add_argument("--publishers", "-p", type=argtypes.int_in(0, 256), default=1, metavar="N",
                   help="publisher processes (default %(default)s)")
    p.add_argument("--receivers", "-r", type=argtypes.int_in(0, 256), default=1, metavar="M",
                   help="receiver processes, each bound to its own address; service "
                   "workers in request mode (default %(default)s)")
    p.add_argument("--window", type=argtypes.int_in(1, 10**7), default=0, metavar="N",
                   help="reliable: unconfirmed messages per publisher (default 1000); "
                   "request: outstanding requests per publisher (default 32)")
    p.add_argument("--api", choices=["blocking", "asyncio"], default="blocking",
                   help="which SDK the clients use: router.client or router.aio "
                   "(default %(default)s)")
    p.add_argument("--tag", default="", help="names the run's addresses bench:<tag>.<n> "
                   "(default: random, so no earlier run's leftovers arrive)")
    p.add_argument("--idle", type=argtypes.seconds, default=2.0, metavar="SECONDS",
                   help="once the publishers are done, a receiver stops after this long "
                   "without a message (default %(default)s)")
    p.add_argument("--timeout", type=argtypes.seconds, default=5.0, metavar="SECONDS",
                   help="how long to wait for the router (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    # every client of the run presents the same key: its principal must allow the names
    # bench-pub-/bench-recv-/bench-req-/bench-worker-<tag>-<n> and the addresses bench:*
    add_key_flags(p)
