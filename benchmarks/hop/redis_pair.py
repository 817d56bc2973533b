"""A Redis primary and one replica for one hop trial (the ``router-redis`` contender's
store): both on free loopback ports, in the trial's scratch directory, each in its own
process group, stopped by id when the trial ends.

Persistence on both: AOF with ``appendfsync everysec``, no RDB snapshots. The primary
refuses writes unless a replica acknowledged within 10 s (``min-replicas-to-write 1``,
``min-replicas-max-lag 10``), as docs/REDIS.md runs it. :meth:`RedisPair.start` returns
once the replica's link is up and the primary counts it as a good replica, so the
router's first fenced append is not refused with NOREPLICAS.

redis-server comes from Debian: ``sudo apt-get install redis-server``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from benchmarks.harness.machine import CLK_TCK, group_cpu_s
from benchmarks.harness.procs import TrialError, free_port, listening, spawn, stop, tail

INSTALL_HINT = "redis-server not installed: sudo apt-get install redis-server"

#: Seconds the replica has to finish its first sync with the primary.
SYNC_TIMEOUT_S = 30.0

PERSISTENCE = ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]


def redis_server() -> str | None:
    """Path of redis-server (PATH, then /usr/bin and /usr/sbin), or None."""
    return shutil.which("redis-server") or next(
        (p for d in ("/usr/bin", "/usr/sbin")
         if os.access(p := os.path.join(d, "redis-server"), os.X_OK)), None)


def redis_version() -> str:
    """redis-server's version ("-" if not installed, "?" if it would not say)."""
    path = redis_server()
    if path is None:
        return "-"
    try:
        text = subprocess.run([path, "--version"], capture_output=True, text=True, check=False,
                              timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    return text.split("v=", 1)[1].split()[0] if "v=" in text else "?"


def _stat_cpu_s(pid: int) -> tuple[float, float]:
    """(utime + stime, cutime + cstime) of ``pid`` in seconds: its own CPU (all its
    threads) and that of the children it has waited for; (0, 0) if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    # Index 0 is field 3: fields 14-17 (utime, stime, cutime, cstime) are 11-14.
    return (int(f[11]) + int(f[12])) / CLK_TCK, (int(f[13]) + int(f[14])) / CLK_TCK


class RedisServer:
    """One redis-server process: ``role`` primary or replica, files under
    ``workdir/redis-<role>/`` (its log ``redis.log``, what it prints before logging
    starts in ``stderr.log``, the AOF directory)."""

    def __init__(self, role: str, workdir: str, port: int, extra: list[str]) -> None:
        self.role = role
        self.port = port
        self.dir = os.path.join(workdir, f"redis-{role}")
        self.log_path = os.path.join(self.dir, "redis.log")
        self.extra = extra
        self.proc: subprocess.Popen | None = None

    def start(self, program: str, timeout: float = 15.0) -> None:
        os.makedirs(self.dir, exist_ok=True)
        cmd = [program, "--bind", "127.0.0.1", "--port", str(self.port),
               "--dir", self.dir, "--logfile", self.log_path, "--daemonize", "no",
               *PERSISTENCE, *self.extra]
        self.proc = spawn(cmd, os.path.join(self.dir, "stderr.log"),
                          stdout=subprocess.DEVNULL, cwd=self.dir)
        deadline = time.monotonic() + timeout
        while not listening(self.port):
            self.check_alive()
            if time.monotonic() > deadline:
                raise TrialError(f"redis {self.role} did not listen on 127.0.0.1:"
                                 f"{self.port} within {timeout:.0f} s: {self.logs()}")
            time.sleep(0.02)

    def logs(self, n: int = 800) -> str:
        """The ends of its log and of its stderr."""
        return " | ".join(t for t in (tail(self.log_path, n),
                                      tail(os.path.join(self.dir, "stderr.log"), n)) if t)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise TrialError(f"redis {self.role} exited with {self.proc.returncode}: "
                             f"{self.logs()}")

    def cpu_parts(self) -> tuple[float, float]:
        """CPU seconds so far of (the server, its forked children): an AOF rewrite is a
        child, and several start and end within one trial, so the children count is
        the live ones (its process group) plus the finished ones it reaped."""
        if not self.proc or self.proc.poll() is not None:
            return 0.0, 0.0
        own, reaped = _stat_cpu_s(self.proc.pid)
        return own, group_cpu_s(self.proc.pid) - own + reaped

    def cpu_s(self) -> float:
        return sum(self.cpu_parts())

    def info(self) -> dict:
        """INFO replication (a fresh connection, short timeouts)."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2,
                             socket_connect_timeout=2)
        try:
            return client.info("replication")
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            # SIGTERM: the AOF is flushed and fsynced, then it exits; give it the time.
            stop(self.proc, grace=10.0)


class RedisPair:
    """A primary and its one replica, started fresh for one trial."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.primary: RedisServer | None = None
        self.replica: RedisServer | None = None

    @property
    def url(self) -> str:
        """The store URL the router takes (database 0 of the primary)."""
        return f"redis://127.0.0.1:{self.primary.port}/0"

    def servers(self) -> list[RedisServer]:
        return [s for s in (self.primary, self.replica) if s is not None]

    def start(self) -> None:
        """Start both and wait (at most SYNC_TIMEOUT_S) until the replica is in sync."""
        program = redis_server()
        if program is None:
            raise TrialError(INSTALL_HINT)
        ports: list[int] = []
        while len(ports) < 2:
            p = free_port()
            if p not in ports:
                ports.append(p)
        # repl-diskless-sync-delay 0: the first sync starts at once instead of waiting
        # 5 s for more replicas to join (start-up only; the trial is not affected).
        self.primary = RedisServer("primary", self.workdir, ports[0], [
            "--min-replicas-to-write", "1", "--min-replicas-max-lag", "10",
            "--repl-diskless-sync-delay", "0"])
        self.primary.start(program)
        self.replica = RedisServer("replica", self.workdir, ports[1], [
            "--replicaof", "127.0.0.1", str(ports[0])])
        self.replica.start(program)
        self._wait_in_sync()

    def _wait_in_sync(self) -> None:
        """Until the replica says ``master_link_status:up`` and the primary counts one
        good replica (``min_slaves_good_slaves``): what min-replicas-to-write checks."""
        import redis

        deadline = time.monotonic() + SYNC_TIMEOUT_S
        seen = "no answer yet"
        while True:
            for s in self.servers():
                s.check_alive()
            try:
                link = self.replica.info().get("master_link_status")
                good = self.primary.info().get("min_slaves_good_slaves")
                seen = f"replica master_link_status:{link}, primary min_slaves_good_slaves:{good}"
                if link == "up" and good is not None and int(good) >= 1:
                    return
            except redis.RedisError as exc:
                seen = f"INFO replication failed: {exc}"
            if time.monotonic() > deadline:
                raise TrialError(
                    f"redis replica on port {self.replica.port} not in sync with the "
                    f"primary on {self.primary.port} within {SYNC_TIMEOUT_S:.0f} s "
                    f"({seen}); replica log: {self.replica.logs()}")
            time.sleep(0.05)

    def cpu_s(self) -> float:
        """CPU seconds both servers (and their forks) have used so far."""
        return sum(s.cpu_s() for s in self.servers())

    def cpu_split(self) -> dict[str, float]:
        """CPU seconds so far of each server and of their forks (AOF rewrites, syncs)."""
        parts = {s.role: s.cpu_parts() for s in self.servers()}
        out = {f"redis-{role}": own for role, (own, _) in parts.items()}
        out["redis-forks"] = sum(forks for _, forks in parts.values())
        return out

    def check_alive(self) -> None:
        for s in self.servers():
            s.check_alive()

    def stop(self) -> None:
        """Stop the replica, then the primary (each by its process id), even if the
        other one fails to stop."""
        try:
            if self.replica is not None:
                self.replica.stop()
        finally:
            if self.primary is not None:
                self.primary.stop()
