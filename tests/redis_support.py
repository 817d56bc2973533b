"""Real Redis servers for tests: a server (RedisServer), a primary with one replica
(RedisPair) and three sentinels watching that primary (Sentinels).

Each process binds 127.0.0.1 on a free port, runs from a config file in a directory the
caller gives (a pytest ``tmp_path``; its log, AOF and the sentinels' rewritten configs
stay there to read when a test fails), and in a process group of its own, so that a
kill also takes any child it forked for a save or a full sync. Every wait is bounded and
fails naming what did not happen and where the logs are. ``with`` stops what it started;
``stop_all()`` (also run at interpreter exit) stops whatever is still running, so a
failing test leaves no process behind.

redis-server and redis-sentinel come from the Debian packages of the same names;
:func:`missing_programs` says which are absent.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Self, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from support import free_port, wait_until

HOST = "127.0.0.1"
PROGRAMS = ("redis-server", "redis-sentinel")

T = TypeVar("T")
Address = tuple[str, int]

#: Processes started and not yet stopped or reaped: what stop_all() stops.
_live: set[RedisProcess] = set()


def missing_programs() -> list[str]:
    """Which of redis-server and redis-sentinel are not on PATH."""
    return [name for name in PROGRAMS if shutil.which(name) is None]


def stop_all() -> None:
    """Stop every process this module started that is still running."""
    for process in list(_live):
        process.stop()


# The last net for a run that ends without stopping its servers (an interrupted test):
# the processes are in sessions of their own, so nothing else would end them.
atexit.register(stop_all)


def wait_for(predicate: Callable[[], T], timeout: float, what: str,
             processes: Iterable[RedisProcess] = ()) -> T:
    """Call ``predicate()`` until it returns something true and return that; a Redis
    error (not listening yet, still loading) counts as not yet. Fail at once if one of
    ``processes`` exits, and after ``timeout`` s naming ``what`` and their logs."""
    processes = list(processes)

    def ready() -> T | None:
        for process in processes:
            process.check_running(what)
        try:
            return predicate()
        except redis.RedisError:
            return None

    logs = ", ".join(str(p.logfile) for p in processes)
    return wait_until(ready, timeout, f"{what} (logs: {logs})" if logs else what)


class RedisProcess:
    """One redis-server or redis-sentinel process run from ``<stem>.conf`` in
    ``directory``, logging to ``<stem>.log`` there.

    The config file is written once, at construction: Redis and Sentinel rewrite it
    (CONFIG REWRITE, a failover) and a restart must find what they wrote.
    ``with`` starts the process (unless started already) and stops it after.
    """

    program = "redis-server"

    def __init__(self, directory: Path | str, stem: str, port: int | None = None) -> None:
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.config_file = self.directory / f"{stem}.conf"
        self.logfile = self.directory / f"{stem}.log"
        self.proc: subprocess.Popen | None = None
        # The harness's own connection. The wait loops are its retries: redis-py's own
        # (with backoff, seconds in all) would delay noticing that the process exited,
        # and short timeouts keep a loop polling a frozen server near its deadline.
        self.admin = redis.Redis(HOST, self.port, socket_timeout=1.0,
                                 socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0),
                                 decode_responses=True)

    def __repr__(self) -> str:
        return f"{self.program} on port {self.port}"

    def _write_config(self, lines: Iterable[str]) -> None:
        common = [f"port {self.port}", f"bind {HOST}", f'dir "{self.directory}"',
                  f'logfile "{self.logfile}"']
        self.config_file.write_text("\n".join([*common, *lines]) + "\n")

    def start(self, timeout: float = 10.0) -> Self:
        """Start the process (again, after stop or kill) and wait until it answers
        PING; returns self. If it does not, stop it and fail."""
        if self.running:
            raise RuntimeError(f"{self} is already running")
        # Output before the logfile is open (a config error) goes to the same log.
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                [shutil.which(self.program) or self.program, str(self.config_file)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.directory, start_new_session=True)
        _live.add(self)
        try:
            wait_for(self.admin.ping, timeout, f"{self} to answer PING", [self])
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def running(self) -> bool:
        """Started and not exited (yet)."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id of the last start (None before the first)."""
        return self.proc.pid if self.proc else None

    def check_running(self, what: str) -> None:
        """Fail, with the end of the log, if the process has exited."""
        if not self.running:
            code = self.proc.returncode if self.proc else "never started"
            raise AssertionError(f"{self} exited ({code}) while waiting for {what}; "
                                 f"end of {self.logfile}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the log."""
        if not self.logfile.exists():
            return ""
        return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        """Send ``sig`` to the process group, as a crash (SIGKILL, the default: then
        wait up to ``timeout`` s until it is gone) or a freeze (SIGSTOP) would."""
        if not self.running:
            return
        # Signalled before it is reaped: the group id is still this process's own.
        os.killpg(self.proc.pid, sig)
        if sig == signal.SIGKILL:
            self.proc.wait(timeout)
            self._forget()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (Redis fsyncs its AOF and exits), then SIGKILL to the group if it has
        not exited within ``timeout`` s; returns the exit code (None if never started)."""
        if self.proc is None:
            return None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            # Asked again and again: Redis refuses a SIGTERM while it writes its first AOF
            # (a replica, just after a full sync) and does not shut down once it is done.
            self.proc.terminate()
            os.killpg(self.proc.pid, signal.SIGCONT)  # a process frozen by SIGSTOP acts on it
            try:
                self.proc.wait(0.2)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)
        self._forget()
        return self.proc.returncode

    def _forget(self) -> None:
        _live.discard(self)
        self.admin.close()

    def __enter__(self) -> Self:
        # Started unless started already: `with RedisServer(d).start() as s` works too.
        return self if self.proc else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisServer(RedisProcess):
    """A redis-server persisting to an AOF (fsync every second, no RDB snapshots) in
    ``directory``: a replica of the server on port ``replicaof`` if given; refusing
    writes (NOREPLICAS) while fewer than ``min_replicas_to_write`` replicas are
    connected and at most 10 s behind if that is set. ``extra_config`` lines are
    appended to its config (a later line wins)."""

    def __init__(self, directory: Path | str, *, port: int | None = None,
                 replicaof: int | None = None, min_replicas_to_write: int = 0,
                 extra_config: Iterable[str] = ()) -> None:
        super().__init__(directory, "redis", port)
        lines = ["appendonly yes", "appendfsync everysec", 'save ""', "protected-mode no",
                 # A full sync writes the snapshot to disk first, as most setups do.
                 "repl-diskless-sync no"]
        if replicaof is not None:
            lines.append(f"replicaof {HOST} {replicaof}")
        if min_replicas_to_write:
            lines += [f"min-replicas-to-write {min_replicas_to_write}",
                      "min-replicas-max-lag 10"]
        self._write_config([*lines, *extra_config])

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{HOST}:{self.port}/0"

    def client(self, **kwargs: object) -> redis.Redis:
        """A new client of this server; ``kwargs`` go to ``redis.Redis`` (5 s socket
        timeouts unless given, so that a test never hangs on a frozen server)."""
        options = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0, **kwargs}
        return redis.Redis(HOST, self.port, **options)

    def info(self, section: str) -> dict:
        """``INFO section`` as a dict."""
        return self.admin.info(section)


class RedisPair:
    """A primary (``directory``/primary) and one replica of it (``directory``/replica).
    The primary has ``min-replicas-to-write 1``: without its replica it refuses writes,
    so that nothing acknowledged lives on the primary alone. ``with`` starts both (unless
    started already) and stops them after."""

    def __init__(self, directory: Path | str) -> None:
        directory = Path(directory)
        self.primary = RedisServer(directory / "primary", min_replicas_to_write=1)
        self.replica = RedisServer(directory / "replica", replicaof=self.primary.port)

    def start(self, timeout: float = 10.0) -> Self:
        """Start both and wait until the replica is in sync and the primary counts it
        (it accepts writes); returns self. If they do not get there, stop both and fail."""
        try:
            self.primary.start(timeout)
            self.replica.start(timeout)
            wait_for(self.linked, timeout, f"replica {self.replica.port} to be in sync "
                     f"with primary {self.primary.port}", [self.primary, self.replica])
        except BaseException:
            self.stop()
            raise
        return self

    def linked(self) -> bool:
        """The replica's link is up and the primary counts it as a good replica."""
        primary = self.primary.info("replication")
        replica = self.replica.info("replication")
        return (primary.get("connected_slaves") == 1
                and primary.get("min_slaves_good_slaves") == 1
                and replica.get("master_link_status") == "up")

    def stop(self) -> None:
        """Stop both (those not already stopped or killed)."""
        try:
            self.replica.stop()
        finally:
            self.primary.stop()

    def __enter__(self) -> Self:
        return self if self.primary.proc else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Sentinel(RedisProcess):
    """One redis-sentinel monitoring the primary on ``primary_port`` as ``master_name``:
    down for it after 3 s without an answer, down for all once ``quorum`` sentinels say
    so; then the sentinel a majority elects fails over. Its config
    (``sentinel-<index>.conf``) is its own: Sentinel rewrites it as it learns."""

    program = "redis-sentinel"

    def __init__(self, directory: Path | str, index: int, primary_port: int,
                 master_name: str, quorum: int) -> None:
        super().__init__(directory, f"sentinel-{index}")
        self.master_name = master_name
        self._write_config([
            "sentinel resolve-hostnames no",
            f"sentinel monitor {master_name} {HOST} {primary_port} {quorum}",
            # Not 1 s: a sentinel pings once a second, and on a busy two-core machine one
            # late answer from a primary promoted a second before made it fail over
            # again, to whatever it listed as a replica (a restarted old primary).
            f"sentinel down-after-milliseconds {master_name} 3000",
            f"sentinel failover-timeout {master_name} 5000",
            f"sentinel parallel-syncs {master_name} 1",
        ])

    def primary(self) -> Address | None:
        """The primary's (host, port) this sentinel reports, None if it does not answer."""
        try:
            reply = self.admin.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME",
                                               self.master_name)
        except redis.RedisError:
            return None
        return (reply[0], int(reply[1])) if reply else None

    def view(self) -> dict[str, object]:
        """``SENTINEL MASTER <name>``: what this sentinel knows of the primary."""
        return self.admin.sentinel_master(self.master_name)


class Sentinels:
    """``count`` (three) sentinels in ``directory`` monitoring the primary on
    ``primary_port`` as ``master_name``, with a majority quorum. ``with`` starts them (unless
    started already) and stops them after."""

    def __init__(self, directory: Path | str, primary_port: int, *,
                 master_name: str = "routerstore", replicas: int = 1, count: int = 3) -> None:
        self.master_name = master_name
        self.replicas = replicas
        self.majority = count // 2 + 1
        self.sentinels = [Sentinel(directory, i, primary_port, master_name, self.majority)
                          for i in range(count)]

    @property
    def addresses(self) -> list[Address]:
        """The sentinels' (host, port)."""
        return [(HOST, s.port) for s in self.sentinels]

    def start(self, timeout: float = 15.0) -> Self:
        """Start them and wait until each names the primary and knows the other sentinels
        and the ``replicas`` replicas; returns self. If they do not get there, stop all
        and fail."""
        try:
            for sentinel in self.sentinels:
                sentinel.start(timeout)
            wait_for(lambda: all(s.primary() for s in self.sentinels), timeout,
                     f"each sentinel to name a primary {self.master_name}", self.sentinels)
            # Before this a kill of the primary would not fail over: a failover needs a
            # majority that knows each other (found by hello messages, every 2 s) and a
            # replica to promote (found in the primary's INFO).
            wait_for(self._acquainted, timeout,
                     f"each sentinel to know {len(self.sentinels) - 1} other sentinels and "
                     f"{self.replicas} replicas", self.sentinels)
        except BaseException:
            self.stop()
            raise
        return self

    def _acquainted(self) -> bool:
        views = [s.view() for s in self.sentinels]
        return all(int(v["num-other-sentinels"]) == len(self.sentinels) - 1
                   and int(v["num-slaves"]) >= self.replicas for v in views)

    def _agreed_primary(self) -> Address | None:
        """The primary a majority of all the sentinels report, if there is one."""
        reports = Counter(r for s in self.sentinels if (r := s.primary()) is not None)
        address, votes = reports.most_common(1)[0] if reports else (None, 0)
        return address if votes >= self.majority else None

    def primary(self) -> Address:
        """The primary's (host, port) as a majority of the sentinels report it."""
        address = self._agreed_primary()
        if address is None:
            reports = {s.port: s.primary() for s in self.sentinels}
            raise AssertionError(f"no majority of sentinels agrees on a primary: {reports}")
        return address

    def wait_for_failover(self, old_port: int, timeout: float = 20.0) -> Address:
        """Wait until a majority reports a primary other than the one on ``old_port``;
        return its (host, port)."""

        def moved() -> Address | None:
            address = self._agreed_primary()
            return address if address and address[1] != old_port else None

        # Only the sentinels running now must stay up: a test may have killed one.
        running = [s for s in self.sentinels if s.running]
        return wait_for(moved, timeout, f"a majority of sentinels to report a primary "
                        f"other than port {old_port}", running)

    def wait_for_replica(self, servers: Iterable[RedisServer],
                         timeout: float = 60.0) -> RedisServer:
        """Wait until the primary a majority names is one of ``servers`` and has a
        replica connected (after a failover Sentinel turns a returning old primary into
        one, some 10-20 s after it is back); return that primary."""
        by_port = {server.port: server for server in servers}

        def served() -> RedisServer | None:
            address = self._agreed_primary()
            primary = by_port.get(address[1]) if address else None
            if primary and primary.info("replication").get("connected_slaves", 0) >= 1:
                return primary
            return None

        running = [s for s in [*self.sentinels, *by_port.values()] if s.running]
        return wait_for(served, timeout, "the primary the sentinels name to have a "
                        "replica connected", running)

    def stop(self) -> None:
        """Stop them all (those not already stopped or killed)."""
        for sentinel in self.sentinels:
            sentinel.stop()

    def __enter__(self) -> Self:
        return self if self.sentinels[0].proc else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
