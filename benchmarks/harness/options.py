"""Command-line options written once: as dataclass fields whose metadata say how.

    @dataclass
    class HopOptions:
        count: int = option(500_000, "messages per trial", flags=("-n", "--count"))
        rates: tuple = option((5000, 20000), "offered rates, msg/s", parse=comma_list(int))

:func:`parser_for` turns such a dataclass into an ``argparse`` parser and
:func:`parse_options` returns an instance built from the command line; library callers
(the pytest suites) build the same dataclass directly, with the same defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Iterable


def option(default: Any, help: str, *, flags: tuple[str, ...] = (),
           parse: Callable[[str], Any] | None = None, metavar: str | None = None,
           saved: bool = True) -> Any:
    """A dataclass field that is also a command-line option.

    ``flags`` default to ``--field-name``; a bool option stores the opposite of its
    default, so a True default needs flags that say "off" (``-q``, ``--no-restart``).
    ``parse`` turns the command-line string into the field's value (default: the type of
    the default). ``saved=False`` keeps the field out of a run's saved options (output
    files, say, which are about this invocation and not about the figures).
    """
    meta = {"help": help, "flags": flags, "parse": parse, "metavar": metavar, "saved": saved}
    return dataclasses.field(default=default, metadata=meta)


def comma_list(item: Callable[[str], Any] = str,
               choices: Iterable[str] | None = None) -> Callable[[str], tuple]:
    """Parser of a comma-separated list into a tuple (empty items dropped), each item
    checked against ``choices`` when given."""
    allowed = tuple(choices) if choices is not None else None

    def parse(text: str) -> tuple:
        items = tuple(item(v) for v in text.split(",") if v)
        for v in items:
            if allowed is not None and v not in allowed:
                raise argparse.ArgumentTypeError(
                    f"unknown {v!r}; choose from {', '.join(allowed)}")
        return items

    parse.__name__ = "comma list"  # what argparse names in "invalid comma list value"
    return parse


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field) -> None:
    """One ``add_argument`` call from a field made by :func:`option`."""
    meta = f.metadata
    flags = meta["flags"] or ("--" + f.name.replace("_", "-"),)
    # argparse formats help with %-interpolation; the texts are written plainly.
    kw: dict[str, Any] = {"dest": f.name, "default": f.default,
                          "help": meta["help"].replace("%", "%%")}
    if isinstance(f.default, bool):
        if f.default and not meta["flags"]:
            raise TypeError(f"{f.name}: a bool option that defaults to True needs flags")
        kw["action"] = "store_false" if f.default else "store_true"
    else:
        kw["type"] = meta["parse"] or (type(f.default) if f.default is not None else str)
        if meta["metavar"]:
            kw["metavar"] = meta["metavar"]
    parser.add_argument(*flags, **kw)


def parser_for(cls: type, *, prog: str | None = None, doc: str = "") -> argparse.ArgumentParser:
    """An argparse parser with one option per field of ``cls``, in field order.

    ``doc`` (a module docstring) gives the description (its first paragraph) and the
    epilog (everything after its second paragraph, the usage examples).
    """
    parts = doc.strip().split("\n\n", 2)
    parser = argparse.ArgumentParser(
        prog=prog, description=parts[0] if parts else None,
        epilog=parts[2] if len(parts) > 2 else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(cls):
        if "help" in f.metadata:
            _add_field(parser, f)
    return parser


def parse_options(cls: type, argv: list[str] | None = None, *, prog: str | None = None,
                  doc: str = "") -> Any:
    """An instance of ``cls`` from the command line (``argv``, default sys.argv[1:])."""
    args = parser_for(cls, prog=prog, doc=doc).parse_args(argv)
    return cls(**vars(args))


def saved_options(opts: Any) -> dict:
    """The fields of ``opts`` a run's JSON keeps (those not marked ``saved=False``)."""
    return {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)
            if f.metadata.get("saved", True)}


def options_from_saved(cls: type, saved: dict) -> Any:
    """Rebuild options from a run's JSON: unknown keys dropped, JSON lists back to the
    tuples the fields hold."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in saved:
            v = saved[f.name]
            out[f.name] = tuple(v) if isinstance(f.default, tuple) and isinstance(v, list) else v
    return cls(**out)


@dataclasses.dataclass
class TrialOptions:
    """What every benchmark command offers about its trials and its output: keeping
    their files, quiet, where they run, the markdown and JSON reports. A command's
    options dataclass derives from it."""

    keep: bool = option(False, "keep trial directories and logs")
    verbose: bool = option(True, "print nothing while the trials run",
                           flags=("-q", "--quiet"))
    workdir: str | None = option(None, "where trial directories go (default: the system's "
                                       "temporary directory)", metavar="DIR")
    markdown: str | None = option(None, "append the markdown report to FILE",
                                  metavar="FILE", saved=False)
    json: str | None = option(None, "write every trial row to FILE", metavar="FILE",
                              saved=False)
    report: str | None = option(None, "run nothing: print the report of a --json FILE of "
                                      "an earlier run", metavar="FILE", saved=False)
