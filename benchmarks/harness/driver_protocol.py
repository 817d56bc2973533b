"""The protocol between an orchestrator and its driver processes, both sides.

A driver program runs as ``python -m PROGRAM ROLE CONFIG.json``. It prints one JSON
object per line on stdout, each with an ``event``: ``ready`` once connected (and through
the handshake), ``sent`` when it holds its connection after the last send, ``result``
at the end, ``error`` (with ``error`` and ``trace``) when anything failed. It reads words
from stdin: ``go`` starts the measured loop, ``close`` ends a hold.

Orchestrator side: :class:`Driver`. Driver side: :func:`emit`, :func:`wait_word`,
:func:`poll_word` and :func:`driver_main`.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import traceback
from typing import Callable

from benchmarks import ROOT
from benchmarks.harness.procs import TrialError, python_module, spawn, stop, tail

# ---------------------------------------------------------------------------------------
# Orchestrator side


class Driver:
    """One sender or receiver process; JSON lines on its stdout, words on its stdin."""

    def __init__(self, program: str, role: str, cfg: dict, workdir: str, tag: str) -> None:
        """Write ``cfg`` to ``workdir/tag.json`` and start ``program`` (a module name)
        as ``role``; its stderr goes to ``workdir/tag.log``."""
        self.role = role
        self.tag = tag
        self.cfg_path = os.path.join(workdir, f"{tag}.json")
        self.log_path = os.path.join(workdir, f"{tag}.log")
        with open(self.cfg_path, "w") as fh:
            json.dump(cfg, fh)
        self.proc = spawn(
            python_module(program, role, self.cfg_path),
            self.log_path,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        self._buf = b""

    def wait(self, event: str, timeout: float) -> dict:
        """The next message with this ``event``; an ``error`` message, an exit or the
        timeout raise :class:`TrialError` (with the end of the driver's log)."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if msg.get("event") == "error":
                    raise TrialError(f"{self.tag}: {msg.get('error')}\n{msg.get('trace', '')}")
                if msg.get("event") == event:
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise TrialError(f"{self.tag}: no '{event}' within {timeout:.0f} s; "
                                 f"log: {tail(self.log_path)}")
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    self.proc.wait(5)
                    raise TrialError(f"{self.tag}: exited with {self.proc.returncode} before "
                                     f"'{event}'; log: {tail(self.log_path)}")
                self._buf += chunk

    def send(self, word: str) -> None:
        """Write one word (a line) to the driver's stdin."""
        self.proc.stdin.write(word.encode() + b"\n")
        self.proc.stdin.flush()

    def go(self) -> None:
        """Start the driver's measured loop."""
        self.send("go")

    def close(self) -> None:
        """Stop the driver process (whatever state it is in)."""
        stop(self.proc, grace=2.0)


# ---------------------------------------------------------------------------------------
# Driver side


class DriverError(RuntimeError):
    """A driver cannot go on; reported to the orchestrator as an ``error`` event."""


def emit(event: str, **fields) -> None:
    """Print one event line for the orchestrator."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def wait_word(timeout: float, word: str = "go") -> None:
    """Block until the orchestrator writes ``word``; anything else or silence fails."""
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if not ready:
        raise DriverError(f"no '{word}' from the orchestrator within {timeout:.0f} s")
    line = sys.stdin.readline().strip()
    if line != word:
        raise DriverError(f"expected '{word}' on stdin, got {line!r}")


def poll_word() -> str | None:
    """A word from the orchestrator if one is waiting, else None (never blocks)."""
    ready, _, _ = select.select([sys.stdin], [], [], 0)
    if ready:
        return sys.stdin.readline().strip() or "eof"
    return None


def driver_main(roles: dict[str, Callable[[dict], None]], usage: str,
                argv: list[str] | None = None) -> int:
    """Run ``roles[ROLE](config)`` for ``ROLE CONFIG.json``; any exception becomes an
    ``error`` event, so that the orchestrator never waits for a driver that died."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in roles:
        print(usage, file=sys.stderr)
        return 2
    try:
        with open(argv[1]) as fh:
            cfg = json.load(fh)
        roles[argv[0]](cfg)
    except Exception as exc:  # report, never hang the orchestrator
        emit("error", error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc())
        return 1
    return 0
