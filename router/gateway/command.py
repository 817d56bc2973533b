"""`router gateway`: run the WebSocket gateway (the `router` command adds the parser)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from router import argtypes, config
from router.auth import credentials as creds_file


class CommandError(Exception):
    """A user's mistake: one line, exit code 2."""


def add_parser(sub) -> None:
    """Add `gateway` to the `router` command's subparsers."""
    p = sub.add_parser("gateway", help="serve apps over WebSocket (and the web apps)",
                       description="Hold apps' WebSocket connections and be one GATEWAY "
                       "connection to the router (docs/GATEWAY.md). App tokens are "
                       "verified with the [tokens] keys of --credentials.")
    p.add_argument("--router", default=config.DEFAULT_BIND, type=argtypes.endpoints,
                   metavar="ENDPOINT", help="the router, or an active router and its standbys "
                   "comma separated (default %(default)s)")
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="where apps connect (ws://HOST:PORT/ws; default %(default)s)")
    p.add_argument("--credentials", required=True, metavar="FILE",
                   help="credentials file whose [tokens] keys verify app tokens")
    p.add_argument("--server-key", metavar="KEY", help="the router's public key (CURVE)")
    p.add_argument("--key", metavar="FILE", help="this gateway's secret key file (CURVE)")
    p.add_argument("--name", default="gateway", help="HELLO name (default %(default)s)")
    p.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                   help="/metrics, /healthz, /readyz on 127.0.0.1:PORT (0: off)")
    p.add_argument("--ping-interval", type=argtypes.seconds, default=20.0, metavar="S",
                   help="ping every app this often; one that has not answered the "
                   "last ping by the next is closed with 4006 (0: no pings; default %(default)s)")
    p.add_argument("--max-reliable", type=argtypes.int_in(1, 1_000_000), default=2000,
                   metavar="N", help="reliable frames one app may leave unwritten before it "
                   "is closed with 4003 to resume (default %(default)s; the router's "
                   "window per address, 1024 by default, bounds it first)")
    p.add_argument("--demo-tokens", action="store_true",
                   help="GET /token?address=user:7 issues a token: for the demo only")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise CommandError(f"--listen {text!r}: write HOST:PORT, e.g. 127.0.0.1:8080")
    return host or "127.0.0.1", int(port)


def run_command(args: argparse.Namespace) -> int:
    """Handle `router gateway`: serve until SIGTERM/SIGINT."""
    from .server import GatewayConfig, run  # websockets is imported only when needed

    host, port = _listen(args.listen)
    try:
        creds = creds_file.load(args.credentials)
    except creds_file.CredentialsError as exc:
        raise CommandError(str(exc)) from None
    if not creds.token_keys:
        raise CommandError(f"{args.credentials} has no [tokens] keys: the gateway cannot "
                           "verify app tokens")
    if bool(args.server_key) != bool(args.key):
        raise CommandError("give both --server-key and --key (CURVE), or neither")
    options = {"server_key": args.server_key, "key": args.key} if args.key else {}
    cfg = GatewayConfig(args.router, creds.token_keys, creds.audience, args.name, options,
                        ping_interval=args.ping_interval, max_reliable=args.max_reliable,
                        demo_tokens=args.demo_tokens)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(cfg, host, port, args.metrics_port, stop=stop)

    try:
        asyncio.run(main())
    except OSError as exc:
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return 0
