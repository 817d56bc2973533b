"""The contenders, each the process under test between the sender and the receivers.

  proxy   zmq.proxy(ROUTER frontend, DEALER backend)                 benchmarks/hop/proxy.py
  proxy-curve  the same with CURVE on both sockets (no ZAP): libzmq's encryption cost
          alone, the yardstick for router-curve/router-plain
  pyloop  a tuned pure-Python ROUTER loop speaking our protocol      benchmarks/hop/pyloop.py
  router  ``python -m router serve --bind tcp://127.0.0.1:PORT``     (``--router-cmd``)
  router-plain  the same with credentials: principals with permissions checked on
          every command, PLAIN mechanism (names and passwords, nothing encrypted)
  router-curve  the same with CURVE: every link encrypted and authenticated
  router-redis  the same router with its journal in Redis (--store redis://...,
          --store-replicas 1): a Redis primary and one replica, AOF everysec, started
          fresh for each trial (benchmarks/hop/redis_pair.py); each group commit is a
          Lua append + WAIT 1 instead of a write + fdatasync. Its hop CPU is the
          router's and both redis-servers' (``hop_cpu_split_s`` in --json has each)
"""

from __future__ import annotations

import os
import select
import shlex
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from benchmarks import ROOT
from benchmarks.harness.machine import group_cpu_s
from benchmarks.harness.procs import (TrialError, free_port, listening, python_env,
                                      python_module, spawn, stop, tail)
from benchmarks.hop.redis_pair import RedisPair

if TYPE_CHECKING:
    from benchmarks.hop.options import HopOptions

CONTENDERS = ("proxy", "proxy-curve", "pyloop", "router", "router-plain", "router-curve",
              "router-redis")


class Hop:
    """The process under test; subclasses start it and set its two endpoints."""

    name = "?"
    speaks_protocol = True
    sender_endpoint = receiver_endpoint = ""
    #: socket options the drivers set (libzmq option number -> text): security
    sockopts: dict[str, str] = {}

    def __init__(self, workdir: str, opts: HopOptions) -> None:
        self.workdir = workdir
        self.opts = opts
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(workdir, f"{self.name}.log")

    def start(self) -> None:
        """Start the process; return once it accepts connections."""
        raise NotImplementedError

    def _wait_ready_line(self, timeout: float = 15.0) -> None:
        """Until the process prints READY on stdout."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        buf = b""
        while b"READY" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise TrialError(f"{self.name} did not start: {tail(self.log_path)}")
            ready, _, _ = select.select([fd], [], [], min(left, 0.2))
            if ready:
                buf += os.read(fd, 4096)

    def cpu_s(self) -> float:
        """CPU seconds its process group has used so far."""
        return group_cpu_s(self.proc.pid) if self.proc else 0.0

    def check_alive(self) -> None:
        """Raise :class:`TrialError` if the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise TrialError(f"{self.name} exited with {self.proc.returncode}: "
                             f"{tail(self.log_path)}")

    def cpu_split(self) -> dict[str, float]:
        """CPU seconds so far of each of its processes, when it has several (else {})."""
        return {}

    def stop(self) -> None:
        """Stop the process (its whole group)."""
        if self.proc is not None:
            stop(self.proc)


class ProxyHop(Hop):
    """(a) the bare hop: senders on a ROUTER frontend, receivers on a DEALER backend."""

    name = "proxy"
    speaks_protocol = False

    def start(self) -> None:
        front, back = free_port(), free_port()
        while back == front:
            back = free_port()
        self.sender_endpoint = f"tcp://127.0.0.1:{front}"
        self.receiver_endpoint = f"tcp://127.0.0.1:{back}"
        self.proc = spawn(
            python_module("benchmarks.hop.proxy", "--frontend", self.sender_endpoint,
                          "--backend", self.receiver_endpoint, *self.extra_args()),
            self.log_path, stdout=subprocess.PIPE, cwd=ROOT,
        )
        self._wait_ready_line()

    def extra_args(self) -> list[str]:
        """More command-line arguments for benchmarks.hop.proxy."""
        return []


def curve_keys(workdir: str) -> tuple[str, dict[str, str]]:
    """Make a server and a client key pair under ``workdir/certs``; return the server's
    secret key file and the socket options a CURVE client driver sets."""
    import zmq
    import zmq.auth

    keys = os.path.join(workdir, "certs")
    os.makedirs(keys, exist_ok=True)
    server = zmq.auth.load_certificate(zmq.auth.create_certificates(keys, "router")[1])
    client = zmq.auth.load_certificate(zmq.auth.create_certificates(keys, "bench")[1])
    return os.path.join(keys, "router.key_secret"), {
        str(zmq.CURVE_SERVERKEY): server[0].decode(),
        str(zmq.CURVE_PUBLICKEY): client[0].decode(),
        str(zmq.CURVE_SECRETKEY): client[1].decode()}


class CurveProxyHop(ProxyHop):
    """The bare hop with CURVE on both sockets: what libzmq's encryption costs alone."""

    name = "proxy-curve"

    def extra_args(self) -> list[str]:
        secret, self.sockopts = curve_keys(self.workdir)
        return ["--curve-secret-key", secret]


class PyLoopHop(Hop):
    """(b) the pure-Python loop: one ROUTER endpoint for everyone."""

    name = "pyloop"

    def start(self) -> None:
        ep = f"tcp://127.0.0.1:{free_port()}"
        self.sender_endpoint = self.receiver_endpoint = ep
        self.proc = spawn(python_module("benchmarks.hop.pyloop", "--bind", ep),
                          self.log_path, stdout=subprocess.PIPE, cwd=ROOT)
        self._wait_ready_line()


class RouterHop(Hop):
    """Our router, started with ``--router-cmd``; ready once its port listens."""

    name = "router"

    def start(self) -> None:
        port = free_port()
        ep = f"tcp://127.0.0.1:{port}"
        self.sender_endpoint = self.receiver_endpoint = ep
        cmd = shlex.split(self.opts.router_cmd.format(
            python=shlex.quote(sys.executable), endpoint=ep, port=port,
            workdir=shlex.quote(self.workdir),
        ))
        # cwd is the trial's scratch directory, so whatever the router writes stays there.
        self.proc = spawn(cmd, self.log_path, stdout=subprocess.DEVNULL, cwd=self.workdir,
                          env=python_env())
        deadline = time.monotonic() + 30
        while not listening(port):
            if self.proc.poll() is not None:
                raise TrialError(f"router exited with {self.proc.returncode} before binding "
                                 f"{ep}: {tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise TrialError(f"router did not bind {ep} within 30 s: "
                                 f"{tail(self.log_path)}")
            time.sleep(0.05)


#: The benchmark's one principal: every driver authenticates as it; it may do all the
#: hop's scenarios need, so the permission checks run on every command and none refuses.
CREDENTIALS = """
[[principal]]
name = "bench"
{login}
roles = ["sender", "endpoint", "gateway"]
names = ["*"]
bind = ["*"]
send = ["*"]
send_channels = ["*"]
join = ["*"]
"""


class SecuredRouterHop(RouterHop):
    """Our router with a credentials file, ``mechanism`` plain or curve."""

    mechanism = "plain"

    def start(self) -> None:
        import hashlib

        import zmq

        creds = os.path.join(self.workdir, "credentials.toml")
        if self.mechanism == "plain":
            login = f'password_sha256 = "{hashlib.sha256(b"bench").hexdigest()}"'
            self.sockopts = {str(zmq.PLAIN_USERNAME): "bench", str(zmq.PLAIN_PASSWORD): "bench"}
            extra = f"--credentials {creds} --mechanism plain"
        else:
            secret, self.sockopts = curve_keys(self.workdir)
            login = f'public_keys = ["{self.sockopts[str(zmq.CURVE_PUBLICKEY)]}"]'
            extra = f"--credentials {creds} --curve-secret-key {secret}"
        with open(creds, "w") as f:
            f.write(CREDENTIALS.format(login=login))
        saved = self.opts.router_cmd
        self.opts.router_cmd = f"{saved} {extra}"
        try:
            super().start()
        finally:
            self.opts.router_cmd = saved


class PlainRouterHop(SecuredRouterHop):
    """Credentials and permissions, PLAIN: the cost of the checks alone."""

    name = "router-plain"
    mechanism = "plain"


class CurveRouterHop(SecuredRouterHop):
    """Credentials, permissions and CURVE encryption."""

    name = "router-curve"
    mechanism = "curve"


class RedisRouterHop(RouterHop):
    """Our router with its store in Redis: a primary and one replica started for the
    trial, every group commit acknowledged by the replica (WAIT 1) before ACCEPTED.
    Only the store differs from ``router`` (``--history false`` records nothing
    here either way: the hop's messages are not order-linked)."""

    name = "router-redis"

    def __init__(self, workdir: str, opts: HopOptions) -> None:
        super().__init__(workdir, opts)
        self.redis = RedisPair(workdir)

    def start(self) -> None:
        self.redis.start()
        saved = self.opts.router_cmd
        self.opts.router_cmd = (f"{saved} --store {self.redis.url} --store-replicas 1 "
                                "--node-id bench --history false")
        try:
            super().start()
        finally:
            self.opts.router_cmd = saved

    def cpu_s(self) -> float:
        """The router's CPU and both redis-servers' (the store works for the hop)."""
        return super().cpu_s() + self.redis.cpu_s()

    def cpu_split(self) -> dict[str, float]:
        return {"router": super().cpu_s(), **self.redis.cpu_split()}

    def check_alive(self) -> None:
        super().check_alive()
        self.redis.check_alive()

    def stop(self) -> None:
        """The router first (a clean stop releases its lease in Redis), then Redis."""
        try:
            super().stop()
        finally:
            self.redis.stop()


HOPS: dict[str, type[Hop]] = {"proxy": ProxyHop, "proxy-curve": CurveProxyHop,
                              "pyloop": PyLoopHop, "router": RouterHop,
                              "router-plain": PlainRouterHop, "router-curve": CurveRouterHop,
                              "router-redis": RedisRouterHop}

#: The contenders that are our router (they need ``import router.core``).
ROUTERS = tuple(n for n, cls in HOPS.items() if issubclass(cls, RouterHop))
