"""Processes a benchmark starts: each in its own process group, every one stopped by id.

Every process goes through :func:`spawn`, which remembers it until :func:`stop` (or
:func:`kill`) ends it, so that :func:`stop_all` can end whatever a trial left behind when
a run fails or is interrupted. Also here: free ports and "is something listening".
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys

from benchmarks import ROOT
from router.ports import free_port  # noqa: F401  (the harness's one way to pick a port)

_LIVE: list[subprocess.Popen] = []


class TrialError(RuntimeError):
    """A trial could not run to the end; the message says which process and why."""


def spawn(cmd: list[str], log_path: str, **kw) -> subprocess.Popen:
    """Start ``cmd`` in a new session (its own process group), stderr to ``log_path``."""
    log = open(log_path, "wb")
    try:
        proc = subprocess.Popen(cmd, stderr=log, start_new_session=True, **kw)
    finally:
        log.close()
    _LIVE.append(proc)
    return proc


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the process group of ``proc`` (gone already: nothing to do)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def stop(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """Stop a process :func:`spawn` started: SIGTERM to its group, SIGKILL after
    ``grace`` seconds; then close our ends of its pipes."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(5)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
    if proc in _LIVE:
        _LIVE.remove(proc)


def kill(proc: subprocess.Popen, wait: float = 10.0) -> None:
    """SIGKILL the group of ``proc`` at once (a crash, as the durability trials need)."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGKILL)
        proc.wait(wait)
    if proc in _LIVE:
        _LIVE.remove(proc)


def stop_all() -> None:
    """Stop every process started here and not stopped yet."""
    for proc in list(_LIVE):
        stop(proc, grace=1.0)


def python_env() -> dict:
    """This environment with the repository first on PYTHONPATH, for the router (which
    runs from a scratch directory) to import this checkout's code."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def python_module(module: str, *args: str) -> list[str]:
    """Command line running ``module`` of this checkout with this interpreter (the cwd
    must be ROOT: ``-m`` looks there first)."""
    return [sys.executable, "-m", module, *args]


def tail(path: str, n: int = 2000) -> str:
    """The last ``n`` bytes of a log file, as text ("" if unreadable)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - n))
            return fh.read().decode(errors="replace").strip()
    except OSError:
        return ""


def listening(port: int) -> bool:
    """True if something listens on 127.0.0.1:port (read from /proc, no connection made)."""
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    parts = line.split()
                    if parts[1].endswith(want) and parts[3] == "0A":
                        return True
        except OSError:
            continue
    return False


def stop_all_on_exit() -> None:
    """Stop every started process when this one exits or gets SIGTERM."""
    def on_signal(signum: int, _frame) -> None:
        stop_all()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    atexit.register(stop_all)
