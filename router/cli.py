"""The `router` command: serve, send, listen, and --version."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from . import __version__, config
from .protocol import MsgClass, Status


def _versions() -> str:
    import zmq

    from . import core

    return (f"router {__version__}\npyzmq {zmq.__version__}\nlibzmq {zmq.zmq_version()}\n"
            f"Cython {core.cython_version()} (compiled the core)\nnative core: libzmq "
            f"{'.'.join(map(str, core.libzmq_version()))} from {core.libzmq_path()}")


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, help="print versions and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(_versions())
        parser.exit()


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="run the router",
                       description="Run the router. Every flag can also come from "
                       "ROUTER_<NAME> in the environment or a TOML file (--config).")
    p.add_argument("--config", help="TOML file of settings (or ROUTER_CONFIG)")
    for name, default, kind in config.describe():
        flag = "--" + name.replace("_", "-")
        if name == "bind":
            p.add_argument(flag, action="append", metavar="ENDPOINT",
                           help=f"endpoint to bind, repeatable (default {default[0]})")
        else:
            p.add_argument(flag, type={"int": int, "float": float}.get(kind, str),
                           metavar=kind.upper(), help=f"default {default}")


def _add_send(sub) -> None:
    p = sub.add_parser("send", help="send one message and wait for its receipt")
    p.add_argument("target", help="address (rider:42) or channel with --channel (order:1)")
    p.add_argument("payload", help="payload text (JSON or anything)")
    p.add_argument("--router", default=config.DEFAULT_BIND, help="router endpoint")
    p.add_argument("--kind", default="", help="message kind, e.g. order.created")
    p.add_argument("--class", dest="msg_class", default="order",
                   choices=[c.name.lower() for c in MsgClass])
    p.add_argument("--ttl-ms", type=int, default=0)
    p.add_argument("--order", default="", help="order:<id> this message belongs to (history)")
    p.add_argument("--channel", action="store_true", help="target is a channel")
    p.add_argument("--name", default="cli", help="sender name")
    p.add_argument("--wait", choices=["accepted", "delivered", "none"], default="accepted")
    p.add_argument("--timeout", type=float, default=5.0)


def _add_listen(sub) -> None:
    p = sub.add_parser("listen", help="bind addresses and print deliveries")
    p.add_argument("addresses", nargs="+")
    p.add_argument("--router", default=config.DEFAULT_BIND, help="router endpoint")
    p.add_argument("--count", type=int, default=0, help="exit after N deliveries (0 = never)")
    p.add_argument("--timeout", type=float, default=0, help="exit after N idle seconds (0 = never)")


def _add_history(sub) -> None:
    p = sub.add_parser("history", help="print an order's timeline (for disputes)")
    p.add_argument("order", help="order id, or order:<id>")
    p.add_argument("--data-dir", default=config.Settings().data_dir,
                   help="the router's data directory (default %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON object per event")


def _add_demo(sub) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of the `router` command."""
    parser = argparse.ArgumentParser(prog="router", description="Order-notification router")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_send(sub)
    _add_listen(sub)
    _add_history(sub)
    _add_demo(sub)
    return parser


def _serve(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name) for name, _, _ in config.describe()}
    try:
        settings = config.load(args.config, overrides=overrides)
    except (ValueError, OSError) as exc:
        print(f"router serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .server import Router

    try:
        router = Router(settings)
    except OSError as exc:
        print(f"router serve: {exc}", file=sys.stderr)
        return 1
    router.serve()
    return 0


def _send(args: argparse.Namespace) -> int:
    from .client import Sender

    with Sender(args.router, args.name, timeout=args.timeout) as s:
        mid = s.send(args.target, args.payload, kind=args.kind, ttl_ms=args.ttl_ms, key=args.order,
                     msg_class=MsgClass[args.msg_class.upper()], channel=args.channel)
        if args.wait == "none" or MsgClass[args.msg_class.upper()] > MsgClass.CHAT:
            s.poll(0.2)
            print(f"sent {mid}")
            return 1 if s.errors else 0
        try:
            r = s.wait(mid, Status[args.wait.upper()], timeout=args.timeout)
        except TimeoutError as exc:
            print(f"router send: {exc}", file=sys.stderr)
            return 1
        print(f"{mid} {r.status.name}" + (f" {r.code.name}" if r.code else ""))
        return 0 if r.status in (Status.ACCEPTED, Status.DELIVERED) else 1


def _listen(args: argparse.Namespace) -> int:
    from .client import Endpoint

    n = 0
    with Endpoint(args.router, args.addresses, name="listen") as ep:
        while True:
            d = ep.recv(timeout=args.timeout or None)
            if d is None:
                return 0
            print(f"{d.address} seq={d.seq} kind={d.kind} from={d.sender} "
                  f"{d.payload.decode(errors='replace')}", flush=True)
            ep.ack(d)
            n += 1
            if args.count and n >= args.count:
                return 0


def _history(args: argparse.Namespace) -> int:
    from pathlib import Path

    import orjson

    from .history import History, format_timeline

    path = Path(args.data_dir) / "history.db"
    if not path.exists():
        print(f"router history: no history database at {path}; is --data-dir the "
              "router's data directory?", file=sys.stderr)
        return 2
    hist = History(path)
    try:
        events = hist.timeline(args.order)
    finally:
        hist.close()
    if not events:
        print(f"router history: no events for order {args.order}", file=sys.stderr)
        return 1
    if args.json:
        for e in events:
            e = {**e, "payload": bytes(e["payload"]).decode(errors="replace")
                 if e["payload"] is not None else None}
            print(orjson.dumps(e).decode())
    else:
        print(format_timeline(events))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from workers.sim.city import Config

    from .demo import DemoError, run

    cfg = Config(seed=args.seed, merchants=args.merchants, riders=args.riders,
                 users=args.users, base_per_min=args.base_per_min, start_hour=args.start,
                 speed=args.speed)
    try:
        return run(cfg, args.seconds, args.workers, args.data_dir)
    except DemoError as exc:
        print(f"router demo: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `router` command."""
    args = build_parser().parse_args(argv)
    handler = {"serve": _serve, "send": _send, "listen": _listen,
               "history": _history, "demo": _demo}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
