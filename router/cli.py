"""The `router` command: serve, config, history, bench and --version here; send, listen,
join, leave and presence (router/client_commands.py), keygen and token (router/auth),
gateway (router/gateway); and the commands other packages add through the
``order_router.commands`` entry points (this project's `router demo`, in workers/).

A user's mistake (a bad endpoint, address or value, no router running, a busy port, a
data directory that cannot be written) ends the command with one line on stderr that
says what was wrong and what to do, and a non-zero exit; never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NoReturn, Sequence

if TYPE_CHECKING:  # importlib.metadata is imported only when other commands are looked up
    from importlib.metadata import EntryPoint

from . import __version__, argtypes, client_commands, config
from .auth import command as auth_command
from .bench.command import add_parser as add_bench_parser
from .gateway import command as gateway_command
from .session import RouterError, RouterUnavailable, order_ref

log = logging.getLogger("router")

#: The entry point group through which other packages add `router` subcommands. Each
#: entry point is named after its command and loads ``register(subparsers)``, which adds
#: the command's parser and returns its handler (the parsed arguments -> an exit code).
#: pyproject.toml declares this project's own: `router demo`, in workers/commands.py.
COMMANDS_GROUP = "order_router.commands"

Handler = Callable[[argparse.Namespace], int]


#: `router serve` exit code of a router that lost its lease to another (a supervisor
#: restarts it, and it stands by).
EXIT_LEASE_LOST = 3


class CliError(Exception):
    """A user's mistake or an environment problem: printed as one line, exit ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line that point at --help (and at ``hint``,
    when one is set)."""

    hint = ""

    def error(self, message: str) -> NoReturn:
        hint = f"; {self.hint}" if self.hint else ""
        self.exit(2, f"{self.prog}: {message}{hint} (see {self.prog} --help)\n")


def _versions() -> str:
    import zmq

    from . import core, libzmq_check

    return (f"router {__version__}\npyzmq {zmq.__version__}\nlibzmq {zmq.zmq_version()}\n"
            f"Cython {core.cython_version()} (compiled the core)\nnative core: libzmq "
            f"{'.'.join(map(str, core.libzmq_version()))} from {core.libzmq_path()}\n"
            f"client-chosen routing ids: {libzmq_check.describe()}")


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, help="print versions and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(_versions())
        parser.exit()


def _add_settings(p: argparse.ArgumentParser) -> None:
    """--config and one flag per Settings field, documented by config.py's comments."""
    p.add_argument("--config", metavar="FILE",
                   help="TOML file of settings (or ROUTER_CONFIG); `router config` writes one")
    for name, default, kind, doc in config.describe():
        flag = "--" + name.replace("_", "-")
        doc = doc.replace("%", "%%")  # argparse formats help with %
        if name == "bind":
            p.add_argument(flag, action="append", metavar="ENDPOINT",
                           help=f"{doc} Repeatable. (default {default[0]})")
        elif kind == "bool":  # --insecure alone means true; --fsync false says no
            p.add_argument(flag, nargs="?", const="true", metavar="BOOL",
                           help=f"{doc} (default {str(default).lower()})")
        else:
            p.add_argument(flag, type={"int": int, "float": float}.get(kind, str),
                           metavar=kind.upper(), help=f"{doc} (default {default})")


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="run the router",
                       description="Run the router. Every flag can also come from "
                       "ROUTER_<NAME> in the environment or a TOML file (--config); flags "
                       "win over the environment, which wins over the file.")
    _add_settings(p)


def _add_config(sub) -> None:
    p = sub.add_parser("config", help="print the effective settings as a commented TOML file",
                       description="Print the settings `router serve` would run with (the "
                       "same flags, environment and --config file) as a TOML file with each "
                       "key's documentation: a starting point for --config.")
    _add_settings(p)


def _add_history(sub) -> None:
    p = sub.add_parser("history", help="print an order's timeline (for disputes)")
    p.add_argument("order", type=argtypes.arg_type(order_ref), help="order id, or order:<id>")
    p.add_argument("--data-dir", default=config.Settings().data_dir,
                   help="the router's data directory (default %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON object per event")


def build_parser(other_commands: bool = True) -> argparse.ArgumentParser:
    """The argparse tree of the `router` command; with ``other_commands``, also the
    commands other packages add (COMMANDS_GROUP)."""
    parser = _Parser(prog="router", description="Order-notification router")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_config(sub)
    client_commands.add_parsers(sub)
    _add_history(sub)
    add_bench_parser(sub)
    auth_command.add_parsers(sub)
    gateway_command.add_parser(sub)
    if other_commands:
        _add_other_commands(parser, sub)
    return parser


def _add_other_commands(parser: _Parser, sub) -> None:
    """Add the commands of COMMANDS_GROUP (a built-in command keeps its name). With none
    found, usage errors say how to get them."""
    found = _command_entry_points()
    if not found:
        parser.hint = (f"no other commands are installed (entry point group {COMMANDS_GROUP}); "
                       "`pip install -e .` in the project's checkout registers them")
    for ep in found:
        if ep.name not in sub.choices:
            _add_command(sub, ep)


def _command_entry_points() -> list[EntryPoint]:
    """The entry points of COMMANDS_GROUP: the installed distributions', then those the
    source checkout this package runs from declares and no installed one does (a checkout
    on PYTHONPATH, or an editable install made before the entry point existed)."""
    from importlib.metadata import entry_points

    return _first_by_name([*entry_points(group=COMMANDS_GROUP), *_checkout_entry_points()])


def entry_points_of(group: str) -> list[EntryPoint]:
    """The entry points of any ``group``, found as those of COMMANDS_GROUP are."""
    from importlib.metadata import entry_points

    return _first_by_name([*entry_points(group=group), *_checkout_group(group)])


def _first_by_name(eps: list[EntryPoint]) -> list[EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in eps:
        found.setdefault(ep.name, ep)
    return list(found.values())


def _checkout_entry_points() -> list[EntryPoint]:
    """COMMANDS_GROUP as the pyproject.toml beside this package declares it, when the
    package runs from this project's source checkout; none otherwise."""
    return _checkout_group(COMMANDS_GROUP)


def _checkout_group(group: str) -> list[EntryPoint]:
    """``group`` as the checkout's pyproject.toml declares it (see above)."""
    import tomllib
    from importlib.metadata import EntryPoint

    try:
        with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as f:
            project = tomllib.load(f).get("project", {})
        if project.get("name") != "order-router":
            return []
        table = project.get("entry-points", {}).get(group, {})
        return [EntryPoint(name, value, group) for name, value in table.items()]
    except (OSError, tomllib.TOMLDecodeError, AttributeError):
        return []


def _add_command(sub, ep: EntryPoint) -> None:
    """Add entry point ``ep``'s command, its handler as the parser's ``_handler``; one
    that cannot be loaded is replaced by a stand-in that says why when run."""
    try:
        handler = _load_command(sub, ep)
    except Exception as exc:  # a broken plugin must not take the other commands down
        handler = _unloadable(ep, exc)
        if ep.name not in sub.choices:
            _add_stand_in(sub, ep)
    sub.choices[ep.name].set_defaults(_handler=handler)


def _load_command(sub, ep: EntryPoint) -> Handler:
    """Import ``ep``'s register function, run it, and check what it did."""
    handler = ep.load()(sub)
    if ep.name not in sub.choices:
        raise LookupError(f"it added no {ep.name!r} command")
    if not callable(handler):
        raise TypeError(f"it returned {handler!r}, not a handler")
    return handler


def _add_stand_in(sub, ep: EntryPoint) -> None:
    """A command for ``ep`` that takes any arguments, even --help (no prefix character
    marks an option), so running it always reaches its handler."""
    p = sub.add_parser(ep.name, add_help=False, prefix_chars="\0",
                       help=f"(cannot be loaded from {ep.value}; run it to see why)")
    p.add_argument("args", nargs="*", help=argparse.SUPPRESS)


def _unloadable(ep: EntryPoint, exc: Exception) -> Handler:
    """The handler of a command whose entry point failed: one line saying why."""
    def fail(args: argparse.Namespace) -> int:
        raise CliError(f"cannot load this command from {ep.value} (entry point group "
                       f"{COMMANDS_GROUP}): {type(exc).__name__}: {exc}; reinstall the "
                       "package that provides it (`pip install -e .` in a checkout)")

    return fail


def _settings(args: argparse.Namespace) -> config.Settings:
    """Settings from --config, the environment and the flags (exit 2 if invalid)."""
    overrides = {name: getattr(args, name) for name, *_ in config.describe()}
    try:
        return config.load(args.config, overrides=overrides)
    except ValueError as exc:
        raise CliError(str(exc), 2) from None


def _check_data_dir(path: str) -> None:
    """Fail early, and clearly, when the data directory cannot be created or written."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise CliError(f"cannot use data directory {path}: {exc.strerror or exc}; give a "
                       "directory this user can write with --data-dir (or ROUTER_DATA_DIR)")


#: What a bind failure's errno means, and what to do about it.
_BIND_CAUSES = {
    errno.EADDRINUSE: "the address is already in use: another router (or another program) "
                      "listens there; stop it or bind another port",
    errno.EACCES: "permission denied: ports below 1024 need root, and an ipc socket a "
                  "directory this user can write",
    errno.EPERM: "permission denied",
    errno.EADDRNOTAVAIL: "no interface of this machine has that address: bind 0.0.0.0 "
                         "(every interface), 127.0.0.1 or one of its own addresses",
    errno.ENODEV: "no such interface or host name: give an IP address, an interface name "
                  "or * (every interface)",
    errno.ENOENT: "the ipc socket's directory does not exist: create it first",
    errno.EINVAL: "not a valid endpoint: write tcp://host:port or ipc:///path",
}


def _startup_error(exc: OSError, settings: config.Settings) -> str:
    """One line for an OSError raised while the router starts."""
    import zmq

    cause = exc.__cause__
    if isinstance(cause, zmq.ZMQError) and str(exc).startswith("cannot bind "):
        endpoint = next((e for e in settings.bind if str(exc).startswith(f"cannot bind {e}:")),
                        "the endpoint")
        reason = _BIND_CAUSES.get(cause.errno, zmq.strerror(cause.errno))
        return f"cannot bind {endpoint}: {reason}"
    return str(exc)


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("router %s settings: %s", __version__, config.summary(settings))
    if settings.journal or settings.history:
        _check_data_dir(settings.data_dir)
    from .journal import StoreError
    from .lease import LeaseLost
    from .server import Router, StandbyStopped

    try:
        router = Router(settings)
    except OSError as exc:
        raise CliError(_startup_error(exc, settings)) from None
    except StandbyStopped:
        return 0   # stopped while a standby: nothing was served
    except StoreError as exc:
        raise CliError(f"store {settings.store}: {exc}; is Redis reachable, and does this "
                       "router hold the lease?") from None
    try:
        router.serve()
    except LeaseLost as exc:
        raise CliError(f"lost the lease on {settings.store}: {exc}; another router serves "
                       "now (restart this one to stand by)", EXIT_LEASE_LOST) from None
    return 0


def _config(args: argparse.Namespace) -> int:
    print(config.to_toml(_settings(args)), end="")
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


def _bench(args: argparse.Namespace) -> int:
    from .bench import BenchError, Plan, check_plan, main as bench_main

    plan = Plan(mode=args.mode, url=args.router, size=args.size, count=args.count,
                duration=args.duration, rate=args.rate, publishers=args.publishers,
                receivers=args.receivers, window=args.window, api=args.api, tag=args.tag,
                idle=args.idle, timeout=args.timeout, **client_commands.key_options(args))
    try:
        check_plan(plan)
        return bench_main(plan, as_json=args.json)
    except ValueError as exc:
        raise CliError(str(exc), 2) from None
    except BenchError as exc:
        raise CliError(str(exc)) from None


#: The built-in commands' handlers.
_HANDLERS: dict[str, Handler] = {
    "serve": _serve, "config": _config, "history": _history, "bench": _bench,
    "keygen": auth_command.run, "token": auth_command.run,
    "gateway": gateway_command.run_command, **client_commands.HANDLERS}

#: What a command raises for a user's mistake: one line, exit ``code`` (2 if it has none).
_MISTAKES = (CliError, auth_command.CommandError, gateway_command.CommandError,
             client_commands.CommandError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `router` command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # a built-in command needs no look-up of the others, nor their imports
    parser = build_parser(other_commands=not argv or argv[0] not in _HANDLERS)
    args = parser.parse_args(argv)
    handler = _HANDLERS.get(args.command) or args._handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except _MISTAKES as exc:
        print(f"router {args.command}: {exc}", file=sys.stderr)
        return getattr(exc, "code", 2)
    except (RouterUnavailable, RouterError) as exc:
        # No router there, or it refused us (HELLO with an address it does not take).
        print(f"router {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
