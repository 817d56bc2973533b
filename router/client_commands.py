"""`router send`, `listen`, `join`, `leave` and `presence`: the client SDK from the
command line (the `router` command adds these parsers and runs these handlers).

A user's mistake (a bad target, a missing key) raises :class:`CommandError`, which the
`router` command prints as one line with its exit code; a router's ERROR is printed as
one line on stderr as it arrives.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import TYPE_CHECKING, Callable

from . import argtypes, config
from .protocol import MsgClass, Status
from .session import MAX_TTL_MS, RouterError, check_address, check_channel, order_ref

if TYPE_CHECKING:  # the SDK (and its native engine) loads only when a command runs
    from .client import Sender


class CommandError(Exception):
    """A user's mistake: one line, exit ``code`` (2 for a bad value, 1 otherwise)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def add_parsers(sub) -> None:
    """Add send, listen, join, leave and presence to the `router` command's subparsers."""
    for add in (_add_send, _add_listen, _add_join, _add_leave, _add_presence):
        add(sub)


def _add_client(p: argparse.ArgumentParser, name: str | None = "cli") -> None:
    """The flags every command that connects to a router takes."""
    p.add_argument("--router", default=config.DEFAULT_BIND, type=argtypes.endpoints,
                   metavar="ENDPOINT",
                   help="the router's endpoint, tcp://host:port or ipc:///path "
                   "(default %(default)s)")
    add_key_flags(p)
    if name:
        p.add_argument("--name", default=name,
                       help="this client's name, scoping its message ids (default %(default)s)")


def _add_send(sub) -> None:
    p = sub.add_parser("send", help="send one message and wait for its receipt")
    p.add_argument("target", help="address (rider:42) or channel with --channel (order:1)")
    p.add_argument("payload", help="payload text (JSON or anything)")
    _add_client(p)
    p.add_argument("--kind", default="", help="message kind, e.g. order.created")
    p.add_argument("--class", dest="msg_class", default="order",
                   choices=[c.name.lower() for c in MsgClass],
                   help="message class: order, dispatch and chat are reliable (journaled, "
                   "acked, receipted); notice and location are best effort "
                   "(default %(default)s)")
    p.add_argument("--ttl-ms", type=argtypes.int_in(0, MAX_TTL_MS, " ms"), default=0, metavar="MS",
                   help="time to live: not acked by then, the message EXPIREs "
                   "(default 0 = no TTL)")
    p.add_argument("--order", default="", metavar="ID",
                   help="the order this message belongs to, 1002 or order:1002: it is "
                   "recorded in that order's history (`router history 1002`)")
    p.add_argument("--channel", action="store_true", help="target is a channel")
    p.add_argument("--wait", choices=["accepted", "delivered", "none"], default="accepted",
                   help="receipt to wait for: accepted (the router holds it, journaled), "
                   "delivered (every recipient acked it) or none (default %(default)s)")
    p.add_argument("--timeout", type=argtypes.seconds, default=5.0, metavar="SECONDS",
                   help="how long to wait for the router and for the receipt "
                   "(default %(default)s)")


def _add_listen(sub) -> None:
    p = sub.add_parser("listen", help="bind addresses and print deliveries",
                       description="Bind addresses and print each delivery (one line), "
                       "acking it; router errors go to stderr. SIGTERM or Ctrl-C leaves "
                       "cleanly (BYE) with exit 0.")
    p.add_argument("addresses", nargs="+", type=argtypes.address, metavar="ADDRESS",
                   help="<kind>:<id>, for example merchant:881")
    _add_client(p, name=None)
    p.add_argument("--count", type=argtypes.int_in(0, 2**63), default=0,
                   help="exit after N deliveries (0 = never)")
    p.add_argument("--timeout", type=argtypes.seconds, default=0,
                   help="exit after N idle seconds (0 = never)")


def _add_join(sub) -> None:
    p = sub.add_parser("join", help="add addresses to a channel (created on first join)")
    p.add_argument("channel", type=argtypes.channel, help="the channel, for example order:1001")
    p.add_argument("addresses", nargs="+", type=argtypes.address, metavar="ADDRESS")
    _add_client(p)
    p.add_argument("--timeout", type=argtypes.seconds, default=5.0, metavar="SECONDS",
                   help="how long to wait for the router (default %(default)s)")


def _add_leave(sub) -> None:
    p = sub.add_parser("leave", help="remove addresses from a channel (none: close it)")
    p.add_argument("channel", type=argtypes.channel)
    p.add_argument("addresses", nargs="*", type=argtypes.address, metavar="ADDRESS",
                   help="addresses to remove; with none, the channel is closed")
    _add_client(p)
    p.add_argument("--timeout", type=argtypes.seconds, default=5.0, metavar="SECONDS",
                   help="how long to wait for the router (default %(default)s)")


def _add_presence(sub) -> None:
    p = sub.add_parser("presence", help="which addresses are online")
    p.add_argument("addresses", nargs="*", type=argtypes.address, metavar="ADDRESS",
                   help="addresses to ask about; with none, every online address")
    _add_client(p)
    p.add_argument("--timeout", type=argtypes.seconds, default=5.0, metavar="SECONDS",
                   help="how long to wait for the router (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the router's JSON answer")


def add_key_flags(p: argparse.ArgumentParser) -> None:
    """--server-key and --key: what a client of an authenticated router presents."""
    p.add_argument("--server-key", metavar="KEY", help="an authenticated router's public "
                   "key: its .key file or the Z85 text (with --key)")
    p.add_argument("--key", metavar="FILE", help="this client's secret key file "
                   "(router keygen NAME: NAME.key_secret), for an authenticated router")


def key_options(args: argparse.Namespace) -> dict:
    """--server-key and --key as the SDK's options (checked when the client starts)."""
    if args.server_key is None and args.key is None:
        return {}
    if args.server_key is None or args.key is None:
        raise CommandError("an authenticated router needs both --server-key (its public "
                           "key) and --key (this client's .key_secret file)", 2)
    return {"server_key": args.server_key, "key": args.key}


def _report(command: str) -> Callable[[RouterError], None]:
    """An on_error callback printing each router ERROR as one line on stderr."""
    def report(err: RouterError) -> None:
        print(f"router {command}: {err}", file=sys.stderr, flush=True)

    return report


def _sender(args: argparse.Namespace) -> Sender:
    """A Sender for ``args.command``: its router, name, timeout and keys from the flags;
    the router's ERRORs printed as they come."""
    from .client import Sender

    return Sender(args.router, args.name, timeout=args.timeout, **key_options(args),
                  on_error=_report(args.command))


def _check(check: Callable[[str], object], value: str) -> None:
    try:
        check(value)
    except ValueError as exc:
        raise CommandError(str(exc), 2) from None


def _send(args: argparse.Namespace) -> int:
    _check(check_channel if args.channel else lambda t: check_address(t, "target"), args.target)
    if args.order:
        _check(order_ref, args.order)
    msg_class = MsgClass[args.msg_class.upper()]
    with _sender(args) as s:
        mid = s.send(args.target, args.payload, kind=args.kind, ttl_ms=args.ttl_ms,
                     order=args.order, msg_class=msg_class, channel=args.channel)
        if args.wait == "none" or msg_class not in (MsgClass.ORDER, MsgClass.DISPATCH,
                                                     MsgClass.CHAT):
            s.poll(0.2)
            print(f"sent {mid}")
            return 1 if s.errors else 0
        try:
            r = s.wait(mid, Status[args.wait.upper()], timeout=args.timeout)
        except TimeoutError as exc:
            raise CommandError(str(exc)) from None
        print(f"{mid} {r.status.name}" + (f" {r.code.name}" if r.code else ""))
        return 0 if r.status in (Status.ACCEPTED, Status.DELIVERED) else 1


class _Stop:
    """SIGTERM and SIGINT set a flag instead of killing the process, so a loop can
    leave cleanly (BYE, close) between two polls."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        self.signal = signum

    def __bool__(self) -> bool:
        return self.signal is not None


def _listen(args: argparse.Namespace) -> int:
    from .client import Endpoint

    stop = _Stop()
    n = 0
    with Endpoint(args.router, args.addresses, name="listen", **key_options(args),
                  on_error=_report(args.command)) as ep:
        idle_since = time.monotonic()
        while not stop:
            # Short slices: a signal is noticed within one, and BYE goes out on the way
            # out of the `with`.
            d = ep.recv(timeout=0.2)
            if d is None:
                if args.timeout and time.monotonic() - idle_since >= args.timeout:
                    return 0
                continue
            print(f"{d.address} seq={d.seq} kind={d.kind} from={d.sender} "
                  f"{d.payload.decode(errors='replace')}", flush=True)
            ep.ack(d)
            idle_since = time.monotonic()
            n += 1
            if args.count and n >= args.count:
                return 0
    return 0


def _round_trip(s, addresses: list[str], timeout: float) -> bool:
    """Wait until the router has handled what this sender sent before (JOIN and LEAVE
    have no reply: a presence request behind them is answered after them); False if
    the router refused any of it (its ERRORs were printed by the on_error callback)."""
    s.presence(addresses, timeout=timeout)
    s.poll(0)
    return not s.errors


def _join(args: argparse.Namespace) -> int:
    with _sender(args) as s:
        s.join(args.channel, args.addresses)
        if not _round_trip(s, args.addresses, args.timeout):
            return 1
    print(f"{args.channel}: joined {' '.join(args.addresses)}")
    return 0


def _leave(args: argparse.Namespace) -> int:
    with _sender(args) as s:
        s.leave(args.channel, args.addresses)
        if not _round_trip(s, args.addresses, args.timeout):
            return 1
    print(f"{args.channel}: " + (f"left {' '.join(args.addresses)}" if args.addresses
                                 else "closed"))
    return 0


def _presence_line(address: str, value) -> str:
    if value is None:
        return f"{address} offline"
    # router.presence answers with the Unix time the address came online; a value this
    # small can only be a duration (seconds online), which the protocol may move to.
    if value > 1e9:
        since = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(value))
        return f"{address} online since {since} ({max(time.time() - value, 0):.0f} s)"
    return f"{address} online for {value:.0f} s"


def _presence(args: argparse.Namespace) -> int:
    import orjson

    with _sender(args) as s:
        online = s.presence(args.addresses, timeout=args.timeout)
    if args.json:
        print(orjson.dumps(online).decode())
    elif not online:
        print("no address is online")
    else:
        for address in sorted(online):
            print(_presence_line(address, online[address]))
    return 0


#: command name -> handler (the parsed arguments -> an exit code)
HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "send": _send, "listen": _listen, "join": _join, "leave": _leave, "presence": _presence}
