"""`router keygen` and `router token`: make CURVE key pairs, issue and check app tokens.

The `router` command adds these parsers and calls :func:`run`; errors are
:class:`CommandError` with a one-line message (the command prints it, exit 2).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from pathlib import Path

from router.auth import credentials as creds_file
from router.auth import tokens
from router.auth.keys import KeyFileError, make_pair


class CommandError(Exception):
    """A user's mistake (wrong file, bad address): one line, exit code 2."""


def duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``7d`` -> seconds (argparse type)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    scale = units.get(t[-1:], None)
    try:
        value = float(t[:-1] if scale else t) * (scale or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: write 3600, 90s, "
                                         "15m, 1h or 7d") from None
    if not 0 < value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"duration must be positive and finite, "
                                         f"got {text!r}")
    return value


def add_parsers(sub) -> None:
    """Add `keygen` and `token` to the `router` command's subparsers."""
    p = sub.add_parser("keygen", help="make a CURVE key pair (router's or a client's)",
                       description="Write NAME.key (the public key: hand it out) and "
                       "NAME.key_secret (keep it; mode 0600) in --dir.")
    p.add_argument("name", help="file name of the pair, e.g. router or orders-api")
    p.add_argument("--dir", default="certs", help="directory (default %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an existing pair")

    p = sub.add_parser("token", help="issue or check an app token (for the gateway)")
    tsub = p.add_subparsers(dest="token_command", required=True)
    t = tsub.add_parser("issue", help="print a signed token for one address")
    t.add_argument("address", help="the address the token proves, e.g. user:7")
    t.add_argument("--ttl", type=duration, default=3600.0, metavar="DURATION",
                   help="lifetime: 3600, 15m, 1h, 7d (default 1h)")
    t.add_argument("--credentials", required=True, metavar="FILE",
                   help="credentials file whose [tokens] keys sign (the first key)")
    t = tsub.add_parser("verify", help="check a token and print its claims")
    t.add_argument("token")
    t.add_argument("--credentials", required=True, metavar="FILE")
    tsub.add_parser("secret", help="print a new random token secret (for [tokens] keys)")


def run(args: argparse.Namespace) -> int:
    """Handle `keygen` or `token`."""
    try:
        if args.command == "keygen":
            return _keygen(args)
        if args.token_command == "secret":
            print(secrets.token_urlsafe(48))
            return 0
        creds = creds_file.load(args.credentials)
        if not creds.token_keys:
            raise CommandError(f"{args.credentials} has no [tokens] keys: add "
                               '[tokens] keys = [{id = "k1", secret_file = "k1.secret"}] '
                               "(router token secret > k1.secret makes one)")
        if args.token_command == "issue":
            try:
                print(tokens.issue(args.address, args.ttl, creds.token_keys, creds.audience))
            except tokens.TokenError as exc:  # the caller's input: a usage mistake
                raise CommandError(f"cannot issue: {exc}") from None
            return 0
        claims = tokens.verify(args.token, creds.token_keys, creds.audience)
        print(json.dumps(claims, sort_keys=True))
        return 0
    except (KeyFileError, creds_file.CredentialsError) as exc:
        raise CommandError(str(exc)) from None
    except tokens.TokenError as exc:
        print(f"router token: refused ({exc.reason}): {exc}", file=sys.stderr)
        return 1


def _keygen(args: argparse.Namespace) -> int:
    public, secret = make_pair(args.dir, args.name, force=args.force)
    key = Path(public).read_text().split('public-key = "')[1].split('"')[0]
    print(f"public key  {public}  (give this file, or the key below, to whoever connects "
          f"to or accepts {args.name})")
    print(f"secret key  {secret}  (keep it here; mode 0600)")
    print(key)
    return 0
