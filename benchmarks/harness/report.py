"""Pieces of the markdown reports and the run files (``--json``, ``--report``, ``--markdown``)
that every benchmark command writes the same way."""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

from benchmarks.harness.machine import NOISE_SHARE

#: Where the native drivers the reports name live.
LOADGEN = "benchmarks/drivers/loadgen.pyx"


def fmt(v: Any, spec: str = ",.0f", none: str = "-") -> str:
    """A figure in a table cell; ``none`` for a missing one."""
    return none if v is None else format(v, spec)


def table_head(*columns: str) -> list[str]:
    """The header and separator lines of a markdown table."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def runs_cell(s: dict) -> str:
    """"used/quiet/all" runs of a summarised figure."""
    return f"{s['used']}/{s['quiet']}/{s['runs']}"


def first_line(text: str, limit: int) -> str:
    """The first line of an error, cut to ``limit`` characters."""
    return text.splitlines()[0][:limit]


def machine_line(env: dict) -> str:
    """"Machine: CPU, cores, kernel. Versions." from an environment record."""
    return (f"Machine: {env['cpu']}, {env['cores']} cores, Linux {env['kernel']}. "
            f"Python {env['python']}, pyzmq {env['pyzmq']} (libzmq {env['libzmq']}), "
            f"Cython {env['cython']}.")


def medians_note(repeat: int) -> str:
    """How the reported medians are taken, as a sentence."""
    return (f"native sender and receiver processes ({LOADGEN}); medians over the quiet runs "
            f"of {repeat} (all runs where none was quiet): a run is noisy when other "
            f"processes used more than {NOISE_SHARE:.0%} of the machine's CPU while it ran.")


def environment_table(env: dict) -> list[str]:
    """The machine and versions as a two-column table (head of a new results file)."""
    return [
        "| | |", "|---|---|",
        f"| CPU | {env['cpu']} |",
        f"| cores | {env['cores']} |",
        f"| kernel | Linux {env['kernel']} |",
        f"| Python | {env['python']} |",
        f"| pyzmq | {env['pyzmq']} (libzmq {env['libzmq']}) |",
        f"| Cython | {env['cython']} |",
        f"| journal filesystem | {env.get('fs', '?')} |",
    ]


def bullets(items: Iterable[str]) -> list[str]:
    """A markdown list followed by a blank line; nothing for no items."""
    lines = [f"- {item}" for item in items]
    return lines + [""] if lines else []


def section(title: str, items: Iterable[str]) -> list[str]:
    """A "### title" section holding a list; nothing for no items."""
    lines = bullets(items)
    return [f"### {title}", "", *lines] if lines else []


def ratio_section(ratios: dict) -> list[str]:
    """The "Ratios (this run)" section."""
    return section("Ratios (this run)", (f"{k}: **{v:.2f}**" for k, v in ratios.items()))


def change_notes(start: dict, end: dict, keys: Iterable[str]) -> list[str]:
    """Notes for every stamp of the router that differs between a run's start and end."""
    return [f"the router changed during the run: {k} was {start.get(k) or '-'!r} at the "
            f"start, {end.get(k) or '-'!r} at the end"
            for k in keys if start.get(k) != end.get(k)]


def save_run(path: str, env: dict, options: dict, when: str, notes: list[str],
             rows: list[dict]) -> None:
    """Write a run (every trial row) as JSON, which ``--report`` reads back."""
    with open(path, "w") as fh:
        json.dump({"environment": env, "options": options, "when": when,
                   "notes": notes, "rows": rows}, fh, indent=1)


def load_run(path: str) -> dict:
    """A run written by :func:`save_run`."""
    with open(path) as fh:
        return json.load(fh)


def append_markdown(path: str, report: str, preamble: str = "") -> None:
    """Append ``report`` to ``path``; a new (or empty) file starts with ``preamble``."""
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a") as fh:
        if new and preamble:
            fh.write(preamble)
        fh.write(report + "\n")
