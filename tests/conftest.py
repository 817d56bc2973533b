"""Fixtures: real router processes on loopback/ipc, and raw DEALER peers.

Every router here is a separate `python -m router serve` process; tests talk to it over
tcp://127.0.0.1 or ipc:// and stop it with SIGTERM (or SIGKILL where a test says so).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import zmq

from router import protocol as P

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RouterProcess:
    """A `router serve` subprocess bound to one tcp and one ipc endpoint."""

    def __init__(self, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.ipc_dir = tempfile.mkdtemp(prefix="router-test-")
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.ipc = f"ipc://{self.ipc_dir}/router.sock"
        self.log_path = Path(self.ipc_dir) / "router.log"
        self.data_dir = f"{self.ipc_dir}/data"
        self.args = ["--bind", self.url, "--bind", self.ipc, "--summary-interval", "1",
                     "--data-dir", self.data_dir, *args]
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> "RouterProcess":
        """Start the process and wait until it answers a HELLO."""
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "router", "serve", *self.args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited with {self.proc.returncode}:\n{self.log()}")
            if self._answers():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"router did not answer within {timeout}s:\n{self.log()}")

    def restart(self, timeout: float = 10.0) -> "RouterProcess":
        """Start again on the same endpoints and data directory (after stop or kill)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("router is still running: stop or kill it first")
        self._log.close()
        return self.start(timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed or closed."""
        self.proc.kill()
        self.proc.wait(10)

    def _answers(self) -> bool:
        with Peer(self.url) as probe:
            probe.send(P.encode_hello(P.Role.SENDER, "probe"))
            frames = probe.recv(timeout=0.2)
            if frames is None:
                return False
            probe.send(P.prefix(P.Command.BYE))
            return True

    def log(self) -> str:
        """Everything the router logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 5.0) -> str:
        """Wait until the router has logged ``text`` (it logs between 100 ms slices)."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            assert time.monotonic() < deadline, f"router never logged {text!r}:\n{log}"
            time.sleep(0.05)
        return log

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the process and wait for it; return its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def remove_files(self) -> None:
        """Delete the temporary directory (socket, data dir, log); call after stop."""
        shutil.rmtree(self.ipc_dir, ignore_errors=True)


class Peer:
    """A raw DEALER socket speaking frames, for protocol-level tests."""

    def __init__(self, url: str, identity: bytes | None = None) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if identity:
            self.sock.setsockopt(zmq.IDENTITY, identity)
        self.sock.connect(url)

    def send(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def recv(self, timeout: float = 2.0) -> list[bytes] | None:
        if not self.sock.poll(int(timeout * 1000)):
            return None
        return self.sock.recv_multipart()

    def recv_command(self, command: P.Command, timeout: float = 2.0,
                     skip_others: bool = False) -> list[bytes]:
        """The next message with ``command``, skipping heartbeats (and any other command
        with ``skip_others``); fail on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            frames = self.recv(max(deadline - time.monotonic(), 0))
            assert frames is not None, f"no {command.name} within {timeout}s"
            if frames[0][2] == command:
                return frames
            assert skip_others or frames[0][2] == P.Command.HEARTBEAT, \
                f"expected {command.name}, got {frames}"

    def hello(self, role: P.Role, name: str, cursors=()) -> None:
        self.send(P.encode_hello(role, name, cursors))
        self.recv_command(P.Command.WELCOME)

    def close(self) -> None:
        self.sock.close(linger=0)

    def __enter__(self) -> "Peer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.fixture
def make_router(request):
    """Factory: start routers with extra `serve` flags; all are stopped at teardown and
    their temporary directories removed if the test passed."""
    started: list[RouterProcess] = []

    def make(*args: str, env: dict | None = None) -> RouterProcess:
        r = RouterProcess(*args, env=env).start()
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop(signal.SIGKILL)
    # A failed test keeps its routers' directories (router.log, journal) to read.
    rep = getattr(request.node, "rep_call", None)
    for r in started:
        if rep is not None and rep.passed:
            r.remove_files()
        else:
            print(f"router files kept: {r.ipc_dir}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell at teardown
    whether the test passed."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def router(make_router) -> RouterProcess:
    """One router with default settings (fast heartbeats for quick liveness tests)."""
    return make_router("--heartbeat-ms", "500")


@pytest.fixture(params=["tcp", "ipc"])
def url(request, router) -> str:
    """The router's tcp and ipc endpoints in turn."""
    return router.url if request.param == "tcp" else router.ipc
