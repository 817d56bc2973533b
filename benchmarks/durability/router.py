"""The router under test: one ``python -m router serve`` process per trial (or two, around
a SIGKILL), its journal mode, and what its log says about replay and shutdown."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from benchmarks.harness.machine import group_cpu_s
from benchmarks.harness.procs import (TrialError, free_port, kill, listening, python_env,
                                      spawn, stop, tail)

if TYPE_CHECKING:
    from benchmarks.durability.options import DurabilityOptions

#: Journal modes: name -> (--journal, --fsync).
MODES = {
    "fsync": ("true", "true"),
    "nofsync": ("true", "false"),
    "nojournal": ("false", "false"),
}
MODE_TITLES = {"fsync": "journal + fsync", "nofsync": "journal, no fsync",
               "nojournal": "no journal"}

RECOVERY_RE = re.compile(
    r"journal (?P<dir>\S+): (?P<segments>\d+) segments, (?P<records>\d+) records, "
    r"(?P<pending>\d+) messages pending, (?P<seconds>[\d.]+)s")
SERVING_RE = re.compile(r"router serving on ")
FINAL_RE = re.compile(r"final: (?P<line>.*)$", re.M)


class RouterProc:
    """One `python -m router serve` process (its own process group)."""

    def __init__(self, workdir: str, data_dir: str, mode: str, opts: DurabilityOptions, *,
                 port: int | None = None, metrics_port: int = 0, tag: str = "router") -> None:
        self.workdir = workdir
        self.data_dir = data_dir
        self.mode = mode
        self.port = port or free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.metrics_port = metrics_port
        self.log_path = os.path.join(workdir, f"{tag}.log")
        self.cmd = self._command(mode, data_dir, metrics_port, opts)
        self.proc: subprocess.Popen | None = None
        self.t_spawn_ns = self.t_listen_ns = self.t_serving_ns = 0

    def _command(self, mode: str, data_dir: str, metrics_port: int,
                 opts: DurabilityOptions) -> list[str]:
        """The router's command line for a journal ``mode`` and the run's options."""
        journal, fsync = MODES[mode]
        cmd = [sys.executable, "-m", "router", "serve", "--bind", self.endpoint,
               "--data-dir", data_dir, "--journal", journal, "--fsync", fsync,
               "--history", "false", "--summary-interval", "0"]
        if metrics_port:
            cmd += ["--metrics-port", str(metrics_port)]
        if opts.router_window:
            cmd += ["--window", str(opts.router_window)]
        if opts.commit_batch:
            cmd += ["--commit-batch", str(opts.commit_batch)]
        if opts.router_args:
            cmd += shlex.split(opts.router_args)
        return cmd

    def start(self, timeout: float = 60.0, wait_serving: bool = True) -> None:
        """Spawn it and wait until it listens (and serves, after its journal replay)."""
        env = python_env()  # before the clock starts: spawn-to-listen times the router
        self.t_spawn_ns = time.monotonic_ns()
        self.proc = spawn(self.cmd, self.log_path, stdout=subprocess.DEVNULL,
                          cwd=self.workdir, env=env)
        deadline = time.monotonic() + timeout
        while not listening(self.port):
            self._check(deadline, "binding")
            time.sleep(0.002)
        self.t_listen_ns = time.monotonic_ns()
        if wait_serving:
            self.wait_serving(deadline)

    def wait_serving(self, deadline: float) -> None:
        """Until the log says "router serving on" (after the journal replay)."""
        while not SERVING_RE.search(self.log()):
            self._check(deadline, "serving")
            time.sleep(0.002)
        self.t_serving_ns = time.monotonic_ns()
        if self.metrics_port:
            while not listening(self.metrics_port):
                self._check(deadline, "serving metrics")
                time.sleep(0.01)

    def _check(self, deadline: float, what: str) -> None:
        """Raise :class:`TrialError` if the router exited or the deadline passed."""
        if self.proc.poll() is not None:
            raise TrialError(f"router exited with {self.proc.returncode} before {what}: "
                             f"{tail(self.log_path)}")
        if time.monotonic() > deadline:
            raise TrialError(f"router not {what} within the deadline: "
                             f"{tail(self.log_path)}")

    def log(self) -> str:
        """Its whole log so far."""
        try:
            with open(self.log_path, "rb") as fh:
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def recovery(self) -> dict:
        """The journal replay its log reports: segments, records, pending, seconds."""
        m = RECOVERY_RE.search(self.log())
        if not m:
            return {}
        return {"segments": int(m["segments"]), "records": int(m["records"]),
                "pending": int(m["pending"]), "replay_s": float(m["seconds"])}

    def final_line(self) -> str:
        """The counters it logs when it stops ("final: ...")."""
        m = FINAL_RE.search(self.log())
        return m["line"].strip() if m else ""

    def cpu_s(self) -> float:
        """CPU seconds its process group has used so far (0 once it exited)."""
        return group_cpu_s(self.proc.pid) if self.proc and self.proc.poll() is None else 0.0

    def check_alive(self) -> None:
        """Raise :class:`TrialError` if it has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise TrialError(f"router exited with {self.proc.returncode}: "
                             f"{tail(self.log_path)}")

    def kill9(self) -> None:
        """SIGKILL, as a crash would end it."""
        if self.proc is not None:
            kill(self.proc)

    def stop(self) -> None:
        """Stop it (SIGTERM, a long grace for the journal to close)."""
        if self.proc is not None:
            stop(self.proc, grace=10.0)


def disk_usage(path: str) -> int:
    """Bytes of every file under ``path``."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass
    return total
