"""The servers under the users' benchmark: the router (open, or with credentials and
CURVE), nats-server (core, or JetStream on file storage) and redis-server. Each runs on a
free loopback port with its own scratch directory, in its own process group, and is
stopped by its id.

nats-server and redis-server come from Debian packages; :func:`missing` says which are
absent and :func:`install_hint` how to get them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time

from benchmarks.harness.machine import group_cpu_s
from benchmarks.harness.procs import TrialError, free_port, listening, python_env, spawn, \
    stop, tail
from benchmarks.sdk import curve

#: contender -> (server kind, what it is).
CONTENDERS = {
    "sdk": ("router", "this SDK, blocking, best effort (NOTICE)"),
    "sdk-reliable": ("router", "this SDK, blocking, reliable (ORDER) with DELIVERED "
                     "receipts, journal + fsync"),
    "sdk-asyncio": ("router", "this SDK, asyncio, best effort (NOTICE)"),
    "sdk-curve": ("router-curve", "this SDK, blocking, best effort (NOTICE), through a "
                  "router with credentials and CURVE: every link encrypted and "
                  "authenticated, permissions checked"),
    "nats": ("nats", "nats-py through nats-server, core publish/subscribe"),
    "jetstream": ("nats-js", "nats-py, JetStream file storage, acked publish "
                  "(publish_async), pull consumer with AckAll"),
    "redis": ("redis", "redis-py + hiredis, pipelined PUBLISH, PubSub receiver"),
}

#: Debian package -> the program it installs.
PROGRAMS = {"nats-server": "nats-server", "redis-server": "redis-server"}
NEEDS = {"nats": "nats-server", "nats-js": "nats-server", "redis": "redis-server"}


def program(name: str) -> str | None:
    """The program's path (PATH, then /usr/sbin and /usr/bin), or None."""
    return (shutil.which(name) or next((p for d in ("/usr/sbin", "/usr/bin")
                                        if os.access(p := os.path.join(d, name), os.X_OK)),
                                       None))


def missing(contenders) -> list[str]:
    """Debian packages the contenders need that are not installed."""
    need = {NEEDS[CONTENDERS[c][0]] for c in contenders if CONTENDERS[c][0] in NEEDS}
    return sorted(p for p in need if program(PROGRAMS[p]) is None)


def install_hint(packages: list[str]) -> str:
    return (f"{', '.join(packages)} not installed: sudo apt-get install {' '.join(packages)} "
            "(the Python clients: pip install -e '.[bench]')")


def missing_clients(contenders) -> list[str]:
    """Python client packages the contenders need that do not import."""
    need = {"nats": "nats", "nats-js": "nats", "redis": "redis"}
    out = set()
    for c in contenders:
        mod = need.get(CONTENDERS[c][0])
        if mod:
            try:
                __import__(mod)
            except ImportError:
                out.add({"nats": "nats-py", "redis": "redis"}[mod])
    if any(CONTENDERS[c][0] == "redis" for c in contenders) \
            and importlib.util.find_spec("hiredis") is None:
        out.add("hiredis")
    return sorted(out)


def versions() -> dict:
    """nats-server, redis-server, nats-py, redis-py and hiredis versions ("-" if absent)."""
    out = {}
    for name, args in (("nats-server", ["--version"]), ("redis-server", ["--version"])):
        path = program(name)
        try:
            text = subprocess.run([path, *args], capture_output=True, text=True,
                                  timeout=10).stdout.strip() if path else "-"
        except (OSError, subprocess.SubprocessError):
            text = "?"
        if name == "redis-server" and "v=" in text:
            text = text.split("v=", 1)[1].split()[0]
        out[name] = text.replace("nats-server: ", "") or "?"
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("nats-py", "redis", "hiredis"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "-"
    return out


class Server:
    """One server process of a trial."""

    def __init__(self, kind: str, workdir: str) -> None:
        self.kind = kind
        self.workdir = workdir
        self.port = free_port()
        self.log_path = os.path.join(workdir, f"{kind}.log")
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        scheme = {"nats": "nats", "nats-js": "nats", "redis": "redis"}.get(self.kind, "tcp")
        return f"{scheme}://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        data = os.path.join(self.workdir, "data")
        if self.kind in ("router", "router-curve"):
            # The defaults a user runs: journal and fsync on (best effort never touches
            # the journal; reliable messages are committed before ACCEPTED).
            cmd = [sys.executable, "-m", "router", "serve", "--bind", self.endpoint,
                   "--data-dir", data, "--journal", "true", "--fsync", "true",
                   "--history", "false", "--summary-interval", "0"]
            # router-curve: the files curve.secure wrote in the trial's directory
            return cmd + (curve.server_args(self.workdir) if self.kind == "router-curve"
                          else [])
        if self.kind == "nats":
            return [program("nats-server"), "-a", "127.0.0.1", "-p", str(self.port)]
        if self.kind == "nats-js":
            return [program("nats-server"), "-a", "127.0.0.1", "-p", str(self.port), "-js",
                    "-sd", data]
        if self.kind == "redis":
            # No persistence; no output buffer limit for subscribers (the default 32 MB
            # cap would disconnect a receiver that falls behind at full speed).
            return [program("redis-server"), "--bind", "127.0.0.1", "--port",
                    str(self.port), "--save", "", "--appendonly", "no", "--dir",
                    self.workdir, "--client-output-buffer-limit", "pubsub 0 0 0"]
        raise ValueError(self.kind)

    def start(self, timeout: float = 30.0) -> None:
        os.makedirs(os.path.join(self.workdir, "data"), exist_ok=True)
        self.proc = spawn(self.command(), self.log_path, stdout=subprocess.DEVNULL,
                          cwd=self.workdir, env=python_env())
        deadline = time.monotonic() + timeout
        while not listening(self.port):
            if self.proc.poll() is not None:
                raise TrialError(f"{self.kind} exited with {self.proc.returncode}: "
                                 f"{tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise TrialError(f"{self.kind} did not listen within {timeout:.0f} s: "
                                 f"{tail(self.log_path)}")
            time.sleep(0.02)

    def cpu_s(self) -> float:
        return group_cpu_s(self.proc.pid) if self.proc and self.proc.poll() is None else 0.0

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise TrialError(f"{self.kind} exited with {self.proc.returncode}: "
                             f"{tail(self.log_path)}")

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, grace=10.0)
