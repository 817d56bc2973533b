"""The `router` subcommands this package adds: `router demo`.

router/cli.py does not import this package: it finds these commands through the
``order_router.commands`` entry points that pyproject.toml declares. Each entry point is
a ``register(subparsers)`` that adds its command's parser and returns the command's
handler (the parsed arguments -> an exit code). This module stays light (argparse
only), so adding the command to the parser imports nothing of the city; the handler
imports the demo when it runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable


def demo(sub: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    """Add `router demo` to the `router` command's subparsers; return its handler."""
    p = sub.add_parser("demo", help="router + dispatch workers + a simulated city at lunch")
    p.add_argument("--seconds", type=float, default=None, help="stop after N real seconds")
    p.add_argument("--speed", type=float, default=30.0, help="simulated seconds per second")
    p.add_argument("--start", type=float, default=11.0, help="simulated start hour")
    p.add_argument("--riders", type=int, default=150)
    p.add_argument("--merchants", type=int, default=60)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--base-per-min", type=float, default=4.0,
                   help="orders per simulated minute outside the peaks (x6 lunch, x8 dinner)")
    p.add_argument("--workers", type=int, default=2, help="dispatch worker processes")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data-dir", default=None,
                   help="keep journal, history and logs here (created if missing); "
                   "default: a temporary directory removed on exit")
    return run_demo


def run_demo(args: argparse.Namespace) -> int:
    """Run `router demo` with the parsed flags; a data directory it cannot use is one
    line on stderr and exit 2."""
    from workers.demo import DemoError, run
    from workers.sim.city import Config

    cfg = Config(seed=args.seed, merchants=args.merchants, riders=args.riders,
                 users=args.users, base_per_min=args.base_per_min, start_hour=args.start,
                 speed=args.speed)
    try:
        return run(cfg, args.seconds, args.workers, args.data_dir)
    except DemoError as exc:
        print(f"router demo: {exc}", file=sys.stderr)
        return 2
