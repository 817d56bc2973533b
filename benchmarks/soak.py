"""Soak: a week of churn on one router without a restart, compressed into minutes.

    python benchmarks/soak.py --minutes 30 --rate 3000
    python benchmarks/soak.py --minutes 3 --out /tmp/soak-short     # /tmp/soak-short.md/.png/.csv
    python benchmarks/soak.py -h                                     # every option

What it drives (one router process, one driver process, loopback tcp):

* orders start at a steady rate (``--rate`` messages/s over ``--order-msgs`` +
  ``--location-msgs`` messages per order). Each order has a user that arrives, lives one
  short order and leaves: its gateway BINDs ``user:<n>``; the sender JOINs
  ``order:<id>`` with the user and one of ``--merchants`` merchants and sends
  ``order.created`` (class ORDER) to the channel; then LOCATION updates (best effort,
  conflated per rider, short TTL) and the rest of the ORDER messages to the user,
  spread over ``--life-seconds``; the gateway acks cumulatively. Once every ORDER
  message of the order has its DELIVERED receipt the sender closes the channel (LEAVE
  with no addresses) and the gateway UNBINDs the user, who is then idle and reclaimed
  by the router after ``--idle-seconds`` (``--address-idle-seconds``).
* users are held by ``--gateways`` GATEWAY connections speaking the raw protocol (one
  DEALER binding and unbinding thousands of addresses in batched BIND/UNBIND, acking
  with one cumulative ACK per pass), the merchants by one more GATEWAY that binds them
  all at start, and one SENDER connection sends everything: that is how the product
  runs (gateways hold the parties' connections), and what one Python process on a
  shared 2-core machine can drive at a few thousand messages a second.
* a fraction ``--returning`` of orders is placed by a user who left long enough ago to
  have been reclaimed; half come back with their old cursor, half from a "new device"
  (cursor 0). Every reliable sequence such a user gets must be above the highest it
  held before.

Every ``--sample-seconds`` it records the router's RSS and CPU (/proc), its table sizes
and queue gauges and latency histograms from /metrics, the disk use of the data
directory's journal/ and history.db, and the driver's own figures (messages sent and
delivered, end-to-end latency from SEND to the DELIVERED receipt and to the DELIVER at
the gateway). At the end it writes ``<out>.md`` (settings, machine, the targets with
PASS/FAIL, and the table over time), ``<out>.png`` (RSS, tables, latency, disk over
time) and ``<out>.csv`` (every sample); ``--out`` defaults to
``benchmarks/soak-<date>``. The exit code is 0 when every target is met.

Targets (from the issue "a week of churn on one router without a restart"):

* RSS and every table size flat after warm-up: over the last two thirds of the run a
  least-squares line changes by at most ``--flat-tolerance`` (5%) of the series' mean,
  or by at most a small absolute floor per series (``FLAT_FLOORS``: a gauge whose mean is
  near 0, like the offline backlog, has no meaningful relative trend);
* p99 from SEND to DELIVERED receipt over the last third within ``--p99-tolerance``
  (20%) of the p99 over the first third (the first sample interval excluded);
* no ADDRESS_LIMIT, although the run creates far more addresses than
  ``--max-addresses`` (100,000 by default: without reclaim the table would fill);
* zero reliable loss: every ORDER message sent got DELIVERED;
* a returning user's numbering always above what it held.

Every loop is bounded in time; the router is started in its own process group and
stopped by its id when the run ends or is interrupted.
"""

from __future__ import annotations

import argparse
import collections
import csv
import datetime
import heapq
import math
import os
import platform
import queue
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field, fields
from pathlib import Path

import zmq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from router import protocol as P  # noqa: E402
from router.ports import free_port  # noqa: E402


@dataclass
class Options:
    """Every knob of a soak run; each field is a ``--flag`` (dashes for underscores)."""

    #: Minutes of churn (orders start during this time; a drain follows).
    minutes: float = 30.0
    #: Messages per second the sender sends (ORDER and LOCATION together).
    rate: float = 3000.0
    #: ORDER (reliable) messages per order: the first to the order's channel (user and
    #: merchant), the rest to the user.
    order_msgs: int = 2
    #: LOCATION (best effort) messages per order, to the user.
    location_msgs: int = 2
    #: Seconds from a user's BIND to the order's last message.
    life_seconds: float = 2.0
    #: GATEWAY connections holding the users.
    gateways: int = 3
    #: Merchants, bound for the whole run by one more GATEWAY connection.
    merchants: int = 2000
    #: Fraction of orders placed by a returning user (left and reclaimed before).
    returning: float = 0.05
    #: Router --address-idle-seconds: an idle address is reclaimed after this.
    idle_seconds: float = 5.0
    #: A user returns no sooner than this many seconds after the reclaim could have
    #: happened (idle_seconds + this), so that most returns meet a reclaimed address.
    return_margin: float = 3.0
    #: Router --max-addresses (the run creates many times more than this).
    max_addresses: int = 100_000
    #: Seconds between samples.
    sample_seconds: float = 10.0
    #: Seconds between rows of the markdown table (0: every sample).
    table_seconds: float = 60.0
    #: After the churn, seconds to wait for the last orders' receipts.
    drain_seconds: float = 60.0
    #: An order whose ORDER messages are not all DELIVERED this long after its last send
    #: is closed anyway (its messages count as lost unless DELIVERED before the end).
    order_timeout: float = 60.0
    #: Stop starting orders while this many ORDER messages await DELIVERED (bounded
    #: driver memory if the router falls behind; counted as "throttled").
    max_pending: int = 200_000
    #: Payload bytes of each message.
    payload_bytes: int = 150
    #: TTL of LOCATION messages, ms (a stale position is worth nothing).
    location_ttl_ms: int = 10_000
    #: Allowed relative trend of RSS and table sizes over the last two thirds.
    flat_tolerance: float = 0.05
    #: Allowed growth of the p99 (last third against first third).
    p99_tolerance: float = 0.20
    #: Output path without suffix (default benchmarks/soak-<date>): .md, .png, .csv.
    out: str = ""
    #: Write the PNG plot (needs matplotlib: pip install -e .[bench]).
    plot: bool = True
    #: PYTHONPATH of the router process (default: this checkout).
    router_path: str = ""
    #: What router build runs, for the report (e.g. "main's working tree at 19:10").
    router_note: str = ""
    #: Extra `router serve` flags, space separated.
    router_args: str = ""
    #: Keep the scratch directory (router log, data dir).
    keep: bool = False
    #: Seed of the driver's random choices.
    seed: int = 1
    #: Print one line per sample.
    verbose: bool = True


#: Absolute trend floors: a series whose fitted change over the last two thirds is within
#: this is flat whatever its relative change (gauges near 0, or tiny tables).
FLAT_FLOORS = {
    "rss_mb": 4.0, "addresses": 500, "bound_addresses": 200, "channels": 200,
    "sender_names": 1, "queued_reliable": 200, "queued_notice": 200,
    "queued_location": 200, "offline_backlog": 50, "offline_addresses": 20, "peers": 1,
}
#: An interval is "quiet" when processes other than the router and the driver used less
#: than this many cores (the report gives the p99 over quiet intervals too).
QUIET_CPU = 0.25
#: With at least this many quiet intervals in both the first and the last third, the p99
#: target compares those; with fewer, all intervals (the quiet ones are too few to say).
MIN_QUIET_INTERVALS = 4
#: Series checked for flatness (the table sizes the issue names, plus RSS).
FLAT_SERIES = tuple(FLAT_FLOORS)


def build_parser() -> argparse.ArgumentParser:
    """argparse from the Options dataclass: ``--field-name``, type from the default."""
    docs = _field_docs()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in fields(Options):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                           help=docs.get(f.name, ""))
        else:
            p.add_argument(flag, type=type(f.default), default=f.default,
                           help=docs.get(f.name, ""))
    return p


def _field_docs() -> dict[str, str]:
    """The ``#:`` comments above Options' fields (the --help text)."""
    docs, pending = {}, []
    for line in Path(__file__).read_text().split("class Options", 1)[1].splitlines()[3:]:
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
        elif m := re.match(r"(\w+)\s*:[^=]+=", text):
            docs[m[1]] = " ".join(pending)
            pending = []
        elif not text:
            break
    return docs


# ---------------------------------------------------------------------------------------
# Measuring


class LogHist:
    """Latency histogram with log-spaced buckets (4% wide, 10 us to ~70 s): bounded
    memory for any run length; quantiles are a bucket's upper bound (<= 4% high)."""

    LOW = 1e-5
    RATIO = 1.04
    N = 400
    _INV = 1.0 / math.log(RATIO)

    def __init__(self) -> None:
        self.counts = [0] * self.N
        self.n = 0

    def add(self, seconds: float) -> None:
        i = int(math.log(seconds / self.LOW) * self._INV) + 1 if seconds > self.LOW else 0
        self.counts[min(i, self.N - 1)] += 1
        self.n += 1

    def merge(self, other: "LogHist") -> "LogHist":
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        self.n += other.n
        return self

    def quantile(self, q: float) -> float:
        """Seconds (the upper bound of the bucket holding the q-quantile); nan if empty."""
        if self.n == 0:
            return math.nan
        want, total = q * self.n, 0
        for i, c in enumerate(self.counts):
            total += c
            if total >= want:
                return self.LOW * self.RATIO ** i
        return self.LOW * self.RATIO ** (self.N - 1)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {'name{labels}': value} (labels as written)."""
    out = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def metric_sum(m: dict[str, float], name: str) -> float:
    """Sum of every series of family ``name`` (any labels)."""
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


def hist_buckets(m: dict[str, float], name: str, labels: str) -> list[tuple[float, float]]:
    """[(le, cumulative count)] of histogram ``name`` whose other labels are ``labels``
    (as written, e.g. 'class="order"'), sorted by le."""
    out = []
    head = f"{name}_bucket{{{labels},le=\""
    for k, v in m.items():
        if k.startswith(head):
            le = k[len(head):-2]
            out.append((math.inf if le == "+Inf" else float(le), v))
    return sorted(out)


def hist_quantile(before: list, after: list, q: float) -> float:
    """The q-quantile (a bucket's upper bound, seconds) of the observations between two
    scrapes of one histogram; nan if none."""
    prev = dict(before)
    diff = [(le, n - prev.get(le, 0.0)) for le, n in after]
    if not diff or diff[-1][1] <= 0:
        return math.nan
    want = q * diff[-1][1]
    for le, n in diff:
        if n >= want:
            return le
    return math.inf


def trend(ts: list[float], ys: list[float]) -> tuple[float, float]:
    """(fitted change over the span of ``ts``, mean) of a least-squares line."""
    n = len(ts)
    if n < 3:
        return 0.0, (sum(ys) / n if n else 0.0)
    mt, my = sum(ts) / n, sum(ys) / n
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return 0.0, my
    slope = sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var
    return slope * (ts[-1] - ts[0]), my


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        parts = fh.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (every core, /proc/stat)."""
    with open("/proc/stat") as fh:
        vals = [int(v) for v in fh.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def disk_bytes(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (a file or a directory), like du."""
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_blocks * 512
    total = 0
    for base, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(base, name)).st_blocks * 512
            except OSError:
                pass
    return total


# ---------------------------------------------------------------------------------------
# The router process


class RouterProc:
    """`router serve` on loopback tcp with /metrics, in its own process group."""

    def __init__(self, opts: Options, workdir: Path) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.data_dir = workdir / "data"
        self.log_path = workdir / "router.log"
        self.cmd = [sys.executable, "-m", "router", "serve", "--bind", self.url,
                    "--data-dir", str(self.data_dir), "--metrics-port", str(self.metrics_port),
                    "--address-idle-seconds", repr(opts.idle_seconds),
                    "--max-addresses", str(opts.max_addresses),
                    "--summary-interval", "60", *opts.router_args.split()]
        path = opts.router_path or str(ROOT)
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [path] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log_path, "ab") as log:
            # cwd: the scratch directory, so `-m router` finds the router on PYTHONPATH
            # rather than a checkout in the current directory
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=self.log_path.parent,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if "router_addresses " in self.scrape(timeout=1.0):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"router did not serve /metrics within {timeout}s:\n{self.log()}")

    def scrape(self, timeout: float = 5.0) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode()

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM its process group (by its id), SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                return self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        return self.proc.poll()

    @property
    def pid(self) -> int:
        return self.proc.pid


# ---------------------------------------------------------------------------------------
# The driver: raw-protocol connections


DELIVER_HEAD = P.PREFIX.size + P.DELIVER.size
RELIABLE = frozenset(int(c) for c in P.RELIABLE_CLASSES)
HEARTBEAT = P.prefix(P.Command.HEARTBEAT)


class Conn:
    """One DEALER connection speaking the protocol (no SDK: frames only)."""

    def __init__(self, ctx: zmq.Context, url: str, role: P.Role, name: str,
                 cursors: list = ()) -> None:
        self.name = name
        self.role = role
        self.sock = ctx.socket(zmq.DEALER)
        for opt, val in ((zmq.LINGER, 0), (zmq.SNDHWM, 0), (zmq.RCVHWM, 0)):
            self.sock.setsockopt(opt, val)
        self.sock.connect(url)
        self.last_send = time.monotonic()
        self.hb_s = 1.0
        self.hello(cursors)

    def hello(self, cursors=(), timeout: float = 30.0) -> None:
        """HELLO with the first MAX_LIST cursors, BIND the rest; wait for WELCOME."""
        parts = P.chunks(cursors)
        self.send(P.encode_hello(self.role, self.name, parts[0]))
        for part in parts[1:]:
            self.send(P.encode_bind(part))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(100):
                frames = self.sock.recv_multipart()
                if frames[0][2] == P.Command.WELCOME:
                    self.hb_s = P.decode_welcome(frames[0]).heartbeat_ms / 1000
                    return
                if frames[0][2] == P.Command.ERROR:
                    raise RuntimeError(f"{self.name}: HELLO refused: "
                                       f"{P.decode_error(frames[0], frames[1])}")
        raise RuntimeError(f"{self.name}: no WELCOME within {timeout}s")

    def send(self, *frames: bytes) -> None:
        self.sock.send_multipart(frames)
        self.last_send = time.monotonic()

    def beat(self, now: float) -> None:
        if now - self.last_send > self.hb_s / 2:
            self.send(HEARTBEAT)

    def close(self) -> None:
        try:
            self.sock.send(P.prefix(P.Command.BYE), zmq.DONTWAIT)
        except zmq.ZMQError:
            pass
        self.sock.close(linger=100)


class Gateway(Conn):
    """A GATEWAY: binds and unbinds many addresses in batches, acks cumulatively."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.cursors: dict[bytes, int] = {}  #: bound address -> highest seq held
        self.dirty: set[bytes] = set()  #: addresses whose cursor moved since the last ACK
        self.binds: list[tuple[bytes, int]] = []
        self.unbinds: list[bytes] = []

    def flush(self) -> None:
        """ACKs first (so an UNBIND after the last ack leaves nothing in flight), then
        the pass's BINDs and UNBINDs, each in as few messages as the list limit allows."""
        if self.dirty:
            acks = [(a, self.cursors.get(a, 0)) for a in self.dirty]
            self.dirty.clear()
            for part in P.chunks(acks):
                self.send(P.encode_ack(part))
        if self.binds:
            for part in P.chunks(self.binds):
                self.send(P.encode_bind(part))
            self.binds.clear()
        if self.unbinds:
            for part in P.chunks(self.unbinds):
                self.send(P.encode_unbind(part))
            self.unbinds.clear()


class Order:
    __slots__ = ("oid", "user", "gw", "chan", "t0", "steps", "step", "pending", "sent_all",
                 "held", "returning", "first_new_seq", "merchant")

    def __init__(self, oid: int, user: bytes, gw: Gateway, t0: float, steps: list,
                 merchant: bytes, held: int, returning: bool) -> None:
        self.oid = oid
        self.user = user
        self.gw = gw
        self.chan = b"order:%d" % oid
        self.t0 = t0
        self.steps = steps  # [(offset s, what)] in time order
        self.step = 0
        self.pending: set[int] = set()  # ORDER msg ids without DELIVERED yet
        self.sent_all = False
        self.merchant = merchant
        self.held = held  # highest seq the user held before (returning users)
        self.returning = returning
        self.first_new_seq = 0


class Stats:
    """The driver's counters: totals, and per-interval ones swapped at each sample."""

    def __init__(self) -> None:
        self.orders_started = self.orders_closed = self.orders_timed_out = 0
        self.users_new = self.users_returning = 0
        self.sent_reliable = self.sent_location = 0
        self.delivered_receipts = 0
        self.accepted = 0
        self.not_delivered = collections.Counter()  # status/code -> count
        self.recv_reliable = self.recv_location = self.duplicates = 0
        self.stray = 0  # deliveries for an address this gateway does not hold
        self.errors = collections.Counter()  # ERROR code name -> count
        self.returns_checked = self.returns_violations = 0
        self.returns_new_device = 0  # of the returns, those with cursor 0 (a new device)
        self.return_min_jump: int | None = None
        self.throttled = 0
        self.late_delivered = 0  # DELIVERED after its order was closed by the timeout
        self.e2e = LogHist()  # SEND -> DELIVERED receipt (interval)
        self.hop = LogHist()  # SEND -> DELIVER of the user's copy at its gateway (interval)
        self.e2e_all: list[tuple[float, LogHist]] = []  # (sample time, interval hist)


class Driver:
    """The churn: one loop over every connection, open-loop order starts."""

    def __init__(self, opts: Options, url: str) -> None:
        self.o = opts
        self.rng = random.Random(opts.seed)
        self.ctx = zmq.Context()
        self.stats = Stats()
        self.msgs_per_order = opts.order_msgs + opts.location_msgs
        if opts.order_msgs < 1:
            raise ValueError("order_msgs must be at least 1 (the order's channel message)")
        self.order_rate = opts.rate / self.msgs_per_order
        self.merchants = [b"merchant:%d" % i for i in range(opts.merchants)]
        self.sender = Conn(self.ctx, url, P.Role.SENDER, "soak-orders")
        self.mgw = Gateway(self.ctx, url, P.Role.GATEWAY, "soak-merchants",
                           [(m, 0) for m in self.merchants])
        self.mgw.cursors = {m: 0 for m in self.merchants}
        self.gws = [Gateway(self.ctx, url, P.Role.GATEWAY, f"soak-gw-{i}")
                    for i in range(opts.gateways)]
        self.conns = [self.sender, self.mgw, *self.gws]
        self.poller = zmq.Poller()
        for c in self.conns:
            self.poller.register(c.sock, zmq.POLLIN)
        self.by_sock = {c.sock: c for c in self.conns}
        self.orders: dict[int, Order] = {}
        self.by_user: dict[bytes, Order] = {}
        self.events: list[tuple[float, int, int]] = []  # (due, tiebreak, oid)
        self.tiebreak = 0
        #: ORDER msg id -> (oid, send time); removed at a final receipt
        self.pending: dict[int, tuple[int, float]] = {}
        #: users who left: (time left, name, highest seq held), oldest first
        self.gone: collections.deque = collections.deque(maxlen=200_000)
        self.msg_prefix = self.rng.getrandbits(31) << 32
        self.msg_counter = 0
        self.next_user = 0
        self.next_oid = 0
        self.payload = (b'{"soak":1,"pad":"' + b"x" * max(opts.payload_bytes - 20, 0)
                        + b'"}')[:max(opts.payload_bytes, 2)]
        self.steps = self._steps()

    def _steps(self) -> list[tuple[float, str]]:
        """One order's timeline: BIND at 0, JOIN + order.created 0.1 s later (after the
        BIND reached the router), locations and the other ORDER messages spread to the
        end of the life, the last ORDER message at the end."""
        life = max(self.o.life_seconds, 0.2)
        lead = 0.1
        steps = [(0.0, "bind"), (lead, "created")]
        direct = self.o.order_msgs - 1
        for j in range(self.o.location_msgs):
            steps.append((lead + (j + 1) * (life - lead) / (self.o.location_msgs + 1),
                          "location"))
        for j in range(direct):
            steps.append((lead + (j + 1) * (life - lead) / direct, "update"))
        steps.sort(key=lambda s: (s[0], s[1] == "update"))
        return steps

    def _msg_id(self) -> int:
        self.msg_counter += 1
        return self.msg_prefix | self.msg_counter

    # -- orders -----------------------------------------------------------------------

    def start_order(self, now: float) -> None:
        s = self.stats
        oid = self.next_oid
        self.next_oid += 1
        held, returning, cursor = 0, False, 0
        gone = self.gone
        if (gone and self.rng.random() < self.o.returning
                and gone[0][0] <= now - self.o.idle_seconds - self.o.return_margin):
            _, user, held = gone.popleft()
            returning = True
            cursor = held if self.rng.random() < 0.5 else 0  # old device or a new one
            s.returns_new_device += cursor == 0
            s.users_returning += 1
        else:
            user = b"user:%d" % self.next_user
            self.next_user += 1
            s.users_new += 1
        gw = self.gws[oid % len(self.gws)]
        order = Order(oid, user, gw, now, self.steps, self.rng.choice(self.merchants),
                      held, returning)
        gw.cursors[user] = cursor
        self.orders[oid] = order
        self.by_user[user] = order
        s.orders_started += 1
        self._step(order, now)  # the BIND now; it schedules the next step

    def _push(self, order: Order) -> None:
        self.tiebreak += 1
        heapq.heappush(self.events, (order.t0 + order.steps[order.step][0], self.tiebreak,
                                     order.oid))

    def _step(self, order: Order, now: float) -> None:
        """Run every step of ``order`` that is due, then schedule the next."""
        while order.step < len(order.steps) and order.t0 + order.steps[order.step][0] <= now:
            what = order.steps[order.step][1]
            order.step += 1
            if what == "bind":
                order.gw.binds.append((order.user, order.gw.cursors[order.user]))
            elif what == "created":
                self.sender.send(P.encode_join(order.chan, [order.user, order.merchant]))
                self._send_order(order, order.chan, b"order.created", P.Flag.CHANNEL, now)
            elif what == "update":
                last = order.step == len(order.steps)
                self._send_order(order, order.user,
                                 b"order.delivered" if last else b"order.update", 0, now)
            elif what == "location":
                self.sender.send(P.encode_send(order.user, self._msg_id(), P.MsgClass.LOCATION,
                                               b"rider.location", b"rider:%d" % order.oid,
                                               ttl_ms=self.o.location_ttl_ms), self.payload)
                self.stats.sent_location += 1
        if order.step < len(order.steps):
            self._push(order)
        else:
            order.sent_all = True
            self.tiebreak += 1
            # the deadline: closed anyway if its receipts have not all come by then
            heapq.heappush(self.events, (now + self.o.order_timeout, self.tiebreak,
                                         order.oid))
            self._maybe_close(order, now)

    def _send_order(self, order: Order, target: bytes, kind: bytes, flags: int,
                    now: float) -> None:
        mid = self._msg_id()
        self.sender.send(P.encode_send(target, mid, P.MsgClass.ORDER, kind, order.chan,
                                       flags=flags), self.payload)
        order.pending.add(mid)
        self.pending[mid] = (order.oid, now)
        self.stats.sent_reliable += 1

    def _maybe_close(self, order: Order, now: float, timed_out: bool = False) -> None:
        if not order.sent_all or (order.pending and not timed_out):
            return
        self.sender.send(P.encode_join(order.chan, [], leave=True))
        gw = order.gw
        gw.unbinds.append(order.user)
        held = gw.cursors.pop(order.user, 0)
        gw.dirty.discard(order.user)  # acked already: its DELIVERED receipts came
        self.gone.append((now, order.user, held))
        del self.orders[order.oid]
        if self.by_user.get(order.user) is order:
            del self.by_user[order.user]
        self.stats.orders_closed += 1
        if timed_out:
            self.stats.orders_timed_out += 1

    def due(self, now: float) -> None:
        """Run every scheduled step due by ``now`` (bounded per pass)."""
        ev = self.events
        for _ in range(20_000):
            if not ev or ev[0][0] > now:
                return
            _, _, oid = heapq.heappop(ev)
            order = self.orders.get(oid)
            if order is None:
                continue
            if order.sent_all:  # its deadline
                self._maybe_close(order, now, timed_out=True)
            else:
                self._step(order, now)

    # -- input ------------------------------------------------------------------------

    def drain(self, conn: Conn, now: float, budget: int = 2000) -> None:
        """Handle what ``conn`` has received (at most ``budget`` messages)."""
        sock = conn.sock
        for _ in range(budget):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            head = frames[0]
            cmd = head[2] if len(head) > 2 else 0
            if cmd == P.Command.DELIVER:
                self._deliver(conn, head, now)
            elif cmd == P.Command.RECEIPT:
                self._receipts(head, now)
            elif cmd == P.Command.ERROR:
                code, mid, text = P.decode_error(head, frames[1] if len(frames) > 1 else b"")
                self.stats.errors[code.name] += 1
                if code == P.ErrorCode.NOT_READY:
                    self._rehello(conn)

    def _deliver(self, gw: Gateway, head: bytes, now: float) -> None:
        s = self.stats
        seq, mid, _, cls, lk, lf, lc, lo, la = P.DELIVER.unpack_from(head, P.PREFIX.size)
        addr = head[len(head) - la:]
        if cls not in RELIABLE:
            s.recv_location += 1
            return
        cursors = gw.cursors
        held = cursors.get(addr)
        if held is None:
            s.stray += 1
            return
        gw.dirty.add(addr)  # ack (again, for a duplicate)
        if seq <= held:
            s.duplicates += 1
            return
        cursors[addr] = seq
        s.recv_reliable += 1
        order = self.by_user.get(addr) if gw is not self.mgw else None
        if order is not None:
            if order.returning and order.first_new_seq == 0:
                order.first_new_seq = seq
                s.returns_checked += 1
                jump = seq - order.held
                if jump <= 0:
                    s.returns_violations += 1
                if s.return_min_jump is None or jump < s.return_min_jump:
                    s.return_min_jump = jump
            elif order.returning and seq <= order.held:
                s.returns_violations += 1
            sent = self.pending.get(mid)
            if sent is not None:
                s.hop.add(now - sent[1])

    def _receipts(self, head: bytes, now: float) -> None:
        s = self.stats
        (count,) = P.COUNT.unpack_from(head, P.PREFIX.size)
        off = P.RECEIPT_HEAD
        size = P.RECEIPT_ENTRY.size
        for i in range(count):
            mid, status, code = P.RECEIPT_ENTRY.unpack_from(head, off + i * size)
            if status == P.Status.ACCEPTED:
                s.accepted += 1
                continue
            sent = self.pending.pop(mid, None)
            if sent is None:
                continue
            oid, t_sent = sent
            if status == P.Status.DELIVERED:
                s.delivered_receipts += 1
                s.e2e.add(now - t_sent)
            else:
                s.not_delivered[f"{P.Status(status).name}:{P.ErrorCode(code).name}"] += 1
            order = self.orders.get(oid)
            if order is None:
                s.late_delivered += status == P.Status.DELIVERED
                continue
            order.pending.discard(mid)
            if not order.pending and order.sent_all:
                self._maybe_close(order, now)

    def _rehello(self, conn: Conn) -> None:
        """The router forgot this connection (dropped it): HELLO again with its bindings."""
        cursors = list(conn.cursors.items()) if isinstance(conn, Gateway) else []
        conn.hello(cursors)

    # -- the loop ---------------------------------------------------------------------

    def run(self, seconds: float, on_sample, sample_seconds: float,
            drain_seconds: float) -> None:
        """Churn for ``seconds``, calling ``on_sample(t)`` every ``sample_seconds``; then
        wait up to ``drain_seconds`` for the open orders to close."""
        o = self.o
        start = time.monotonic()
        self.start_time = start
        end = start + seconds
        next_sample = start + sample_seconds
        next_beat = start
        started = 0
        churning = True
        drain_end = end + drain_seconds
        while True:
            now = time.monotonic()
            if churning and now >= end:
                churning = False
            if not churning and (not self.orders or now >= drain_end):
                break
            if churning:
                due = int((now - start) * self.order_rate) + 1
                for _ in range(min(due - started, 2000)):
                    if len(self.pending) >= o.max_pending:
                        self.stats.throttled += due - started
                        started = due
                        break
                    self.start_order(now)
                    started += 1
            self.due(now)
            for gw in self.gws:
                gw.flush()
            self.mgw.flush()
            if now >= next_beat:
                for c in self.conns:
                    c.beat(now)
                next_beat = now + 0.1
            if now >= next_sample and churning:
                on_sample(now - start)
                next_sample += sample_seconds
            wake = min(self.events[0][0] if self.events else now + 0.005,
                       start + (started + 1) / self.order_rate if churning else now + 0.005,
                       now + 0.005)
            timeout_ms = max(0, int((wake - time.monotonic()) * 1000))
            for sock, _ in self.poller.poll(timeout_ms):
                self.drain(self.by_sock[sock], time.monotonic())
        self.end_time = time.monotonic()
        # acks of the last deliveries, then nothing is left to send
        for gw in self.gws:
            gw.flush()
        self.mgw.flush()

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.ctx.term()


# ---------------------------------------------------------------------------------------
# Sampling


class Sampler:
    """Takes a sample on request in its own thread (the scrape and du never stall the
    driver's loop): router-side figures plus the driver's, one row per sample."""

    def __init__(self, router: RouterProc, driver: Driver, verbose: bool) -> None:
        self.router = router
        self.driver = driver
        self.verbose = verbose
        self.rows: list[dict] = []
        self.q: queue.Queue = queue.Queue()
        self.prev_metrics: dict | None = None
        self.prev_cpu = (0.0, 0.0, 0.0, time.monotonic())  # router, driver, machine, t
        self.prev_driver = {"sent": 0, "delivered": 0, "recv": 0}
        self.thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)
        self.thread.start()

    def request(self, t: float) -> None:
        """Called from the driver's loop: swap the interval histograms, queue the row."""
        d, s = self.driver, self.driver.stats
        e2e, hop = s.e2e, s.hop
        s.e2e, s.hop = LogHist(), LogHist()
        s.e2e_all.append((t, e2e))
        snap = {
            "t": t, "orders": s.orders_started, "open_orders": len(d.orders),
            "sent": s.sent_reliable + s.sent_location, "delivered": s.delivered_receipts,
            "recv": s.recv_reliable + s.recv_location, "pending": len(d.pending),
            "returns": s.returns_checked, "return_violations": s.returns_violations,
            "e2e_p50_ms": e2e.quantile(0.50) * 1e3, "e2e_p99_ms": e2e.quantile(0.99) * 1e3,
            "hop_p99_ms": hop.quantile(0.99) * 1e3, "throttled": s.throttled,
            "address_limit": s.errors.get("ADDRESS_LIMIT", 0),
        }
        self.q.put(snap)

    def finish(self, timeout: float = 30.0) -> None:
        self.q.put(None)
        self.thread.join(timeout)

    def _run(self) -> None:
        while True:
            snap = self.q.get()
            if snap is None:
                return
            try:
                self.rows.append(self._sample(snap))
            except Exception as exc:  # a failed scrape must not end the run
                print(f"sample at {snap['t']:.0f}s failed: {exc!r}", file=sys.stderr)
                continue
            if self.verbose:
                r = self.rows[-1]
                print(f"t={r['t']:6.0f}s rss={r['rss_mb']:6.1f}MB cpu={r['router_cpu']:4.0%} "
                      f"other={r['other_cpu']:4.0%} "
                      f"addr={r['addresses']:6.0f} created={r['created']:8.0f} "
                      f"reclaimed={r['reclaimed']:8.0f} chan={r['channels']:5.0f} "
                      f"sent/s={r['sent_rate']:6.0f} e2e p99={r['e2e_p99_ms']:6.1f}ms "
                      f"pending={r['pending']:5d} journal={r['journal_mb']:6.1f}MB "
                      f"history={r['history_mb']:7.1f}MB", file=sys.stderr, flush=True)

    def _sample(self, snap: dict) -> dict:
        r = self.router
        m = parse_metrics(r.scrape())
        now = time.monotonic()
        cpu, dcpu, busy = cpu_seconds(r.pid), cpu_seconds(os.getpid()), machine_busy_seconds()
        cpu0, dcpu0, busy0, t0 = self.prev_cpu
        self.prev_cpu = (cpu, dcpu, busy, now)
        row = dict(snap)
        dt = max(snap["t"] - (self.rows[-1]["t"] if self.rows else 0.0), 1e-9)
        for key, rate in (("sent", "sent_rate"), ("delivered", "delivered_rate"),
                          ("recv", "recv_rate")):
            row[rate] = (snap[key] - self.prev_driver[key]) / dt
            self.prev_driver[key] = snap[key]
        span = max(now - t0, 1e-9)
        first = not self.rows
        # cores used by the router, the driver, and everything else on the machine (the
        # noise: other tenants' builds and tests)
        row["router_cpu"] = math.nan if first else (cpu - cpu0) / span
        row["driver_cpu"] = math.nan if first else (dcpu - dcpu0) / span
        row["other_cpu"] = math.nan if first else max(
            (busy - busy0) - (cpu - cpu0) - (dcpu - dcpu0), 0.0) / span
        row.update(router_figures(r, m))
        for name, key in (("router_delivery_latency_seconds", "router_delivery_p99_ms"),
                          ("router_hop_latency_seconds", "router_hop_p99_ms")):
            after = hist_buckets(m, name, 'class="order"')
            before = hist_buckets(self.prev_metrics, name, 'class="order"') \
                if self.prev_metrics else []
            row[key] = hist_quantile(before, after, 0.99) * 1e3
        self.prev_metrics = m
        return row


def router_figures(r: RouterProc, m: dict[str, float] | None = None) -> dict:
    """The router's side of a sample: RSS, table sizes and gauges, disk use."""
    m = parse_metrics(r.scrape()) if m is None else m
    return {
        "rss_mb": rss_bytes(r.pid) / 2**20,
        "addresses": m.get("router_addresses", math.nan),
        "created": m.get("router_addresses_created_total", math.nan),
        "reclaimed": m.get("router_addresses_reclaimed_total", math.nan),
        "bound_addresses": m.get("router_bound_addresses", math.nan),
        "channels": m.get("router_channels", math.nan),
        "sender_names": m.get("router_sender_names", math.nan),
        "queued_reliable": m.get('router_queued_messages{kind="reliable"}', math.nan),
        "queued_notice": m.get('router_queued_messages{kind="notice"}', math.nan),
        "queued_location": m.get('router_queued_messages{kind="location"}', math.nan),
        "offline_backlog": m.get("router_offline_backlog_messages", math.nan),
        "offline_addresses": m.get("router_offline_addresses", math.nan),
        "peers": metric_sum(m, "router_peers"),
        "router_errors_address_limit": m.get('router_errors_total{code="address_limit"}', 0.0),
        "journal_mb": disk_bytes(r.data_dir / "journal") / 2**20,
        "history_mb": sum(disk_bytes(r.data_dir / f"history.db{x}")
                          for x in ("", "-wal", "-shm")) / 2**20,
        "driver_rss_mb": rss_bytes(os.getpid()) / 2**20,
    }


# ---------------------------------------------------------------------------------------
# Evaluation and report


@dataclass
class Result:
    opts: Options
    rows: list[dict]
    stats: Stats
    seconds: float  #: churn time actually run
    lost: int  #: ORDER messages never DELIVERED
    still_pending: int  #: of which no final receipt at all
    final: dict  #: figures after the drain
    targets: list[tuple[str, bool, str]] = field(default_factory=list)
    flat: dict = field(default_factory=dict)  #: series -> (change, mean, relative, ok)
    p99_first_ms: float = math.nan
    p99_last_ms: float = math.nan
    p99_typical_first_ms: float = math.nan  #: median of the first third's interval p99s
    p99_typical_last_ms: float = math.nan
    #: the same medians over the quiet intervals only (other CPU < QUIET_CPU)
    p99_quiet: tuple = (math.nan, math.nan)
    quiet_intervals: int = 0
    #: how many of them fall in the first and in the last third
    quiet_counts: tuple = (0, 0)
    out: Path | None = None

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.targets)


def evaluate(res: Result, flat_tolerance: float | None = None,
             p99_tolerance: float | None = None, p99_floor_ms: float = 0.0,
             floors: dict | None = None) -> list[tuple[str, bool, str]]:
    """The issue's targets as (name, ok, figures). Tolerances default to the options';
    ``p99_floor_ms`` lets the last third's p99 exceed the tolerance by that many ms (a
    test on a noisy machine); ``floors`` replaces FLAT_FLOORS."""
    o, s = res.opts, res.stats
    flat_tol = o.flat_tolerance if flat_tolerance is None else flat_tolerance
    p99_tol = o.p99_tolerance if p99_tolerance is None else p99_tolerance
    floors = FLAT_FLOORS if floors is None else floors
    rows = res.rows
    T = res.seconds
    tail = [r for r in rows if r["t"] >= T / 3]
    targets = []
    res.flat = {}
    worst = []
    for key in FLAT_SERIES:
        pts = [(r["t"], r[key]) for r in tail if not math.isnan(r.get(key, math.nan))]
        if len(pts) < 3:
            res.flat[key] = (math.nan, math.nan, math.nan, False)
            worst.append(f"{key}: too few samples")
            continue
        change, mean = trend([p[0] for p in pts], [p[1] for p in pts])
        rel = change / mean if mean else (0.0 if change == 0 else math.inf)
        ok = abs(rel) <= flat_tol or abs(change) <= floors.get(key, 0)
        res.flat[key] = (change, mean, rel, ok)
        if not ok:
            worst.append(f"{key} {change:+.1f} on {mean:.1f} ({rel:+.1%})")
    rss = res.flat["rss_mb"]
    targets.append(("RSS flat over the last two thirds", rss[3],
                    f"{rss[0]:+.1f} MB on {rss[1]:.1f} MB ({rss[2]:+.1%})"))
    table_ok = all(v[3] for k, v in res.flat.items() if k != "rss_mb")
    targets.append(("every table size flat over the last two thirds", table_ok,
                    "; ".join(w for w in worst if not w.startswith("rss")) or
                    "all within tolerance (per-series figures below)"))
    # p99: first third (without the first interval) against the last third. The target
    # reads the median of the per-interval p99s: a sustained slowdown (a table that
    # degrades with churn) moves it, a burst of other tenants' load on this shared
    # machine in one or two intervals does not. The pooled p99 is reported beside it.
    first, last = LogHist(), LogHist()
    first_pts, last_pts = [], []  # (sample time, the interval's p99 ms), non-empty ones
    for i, (t, h) in enumerate(s.e2e_all):
        if i > 0 and t <= T / 3 + 1e-6:
            first.merge(h)
            pts = first_pts
        elif t > 2 * T / 3:
            last.merge(h)
            pts = last_pts
        else:
            continue
        if h.n:
            pts.append((t, h.quantile(0.99) * 1e3))
    res.p99_first_ms = first.quantile(0.99) * 1e3
    res.p99_last_ms = last.quantile(0.99) * 1e3
    first_p99 = [v for _, v in first_pts]
    last_p99 = [v for _, v in last_pts]
    # the same in the intervals where other tenants left the machine nearly alone
    quiet = {r["t"] for r in rows if r.get("other_cpu", math.inf) < QUIET_CPU}
    thirds = [[v for t, v in pts if t in quiet] for pts in (first_pts, last_pts)]
    res.p99_quiet = tuple(statistics.median(v) if v else math.nan for v in thirds)
    res.quiet_counts = tuple(len(v) for v in thirds)
    res.quiet_intervals = len(quiet)
    res.p99_typical_first_ms = statistics.median(first_p99) if first_p99 else math.nan
    res.p99_typical_last_ms = statistics.median(last_p99) if last_p99 else math.nan
    a, b = res.p99_typical_first_ms, res.p99_typical_last_ms
    judged = "median of the per-interval p99s"
    if min(res.quiet_counts) >= MIN_QUIET_INTERVALS:
        # Judge the router on the intervals its neighbours left alone: a tenant busy for
        # most of one third (a build, another benchmark) moves even the median.
        a, b = res.p99_quiet
        judged += f", the {sum(res.quiet_counts)} quiet intervals"
    p99_ok = bool(first_p99 and last_p99) and b <= a * (1 + p99_tol) + p99_floor_ms
    targets.append((f"p99 SEND->DELIVERED, last third within {p99_tol:.0%} of the first "
                    f"({judged})", p99_ok,
                    f"{a:.1f} ms -> {b:.1f} ms ({b / a - 1:+.0%}); pooled p99 "
                    f"{res.p99_first_ms:.1f} ms -> {res.p99_last_ms:.1f} ms"
                    if first_p99 and last_p99 else "too few samples"))
    # the router counts every ADDRESS_LIMIT it decides; the driver, those that reached it
    limit = max(s.errors.get("ADDRESS_LIMIT", 0),
                int(res.final.get("router_errors_address_limit", 0)))
    created = res.final.get("created", 0)
    targets.append(("no ADDRESS_LIMIT", limit == 0,
                    f"{limit} ADDRESS_LIMIT errors; {created:,.0f} addresses created against "
                    f"max_addresses {o.max_addresses:,}"))
    targets.append(("zero reliable loss", res.lost == 0 and s.sent_reliable > 0,
                    f"{s.sent_reliable:,} ORDER sent, {s.delivered_receipts:,} DELIVERED, "
                    f"{res.lost} not delivered"
                    + (f" ({dict(s.not_delivered)})" if s.not_delivered else "")))
    targets.append(("a returning user numbers above what it held",
                    s.returns_violations == 0 and s.returns_checked > 0,
                    f"{s.returns_checked:,} returns checked ({s.returns_new_device:,} from a "
                    f"new device, cursor 0), {s.returns_violations} violations, smallest "
                    f"jump {s.return_min_jump}"))
    res.targets = targets
    return targets


def machine() -> str:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB, Linux {platform.release()}"


def versions(router_path: str) -> str:
    try:
        rev = subprocess.run(["git", "-C", router_path, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        rev = "?"
    try:
        import Cython
        cy = Cython.__version__
    except ImportError:
        cy = "?"
    return (f"Python {platform.python_version()}, pyzmq {zmq.__version__}, libzmq "
            f"{zmq.zmq_version()}, Cython {cy}, router at {router_path} ({rev})")


COLUMNS = [  # (key, header, format)
    ("t", "t (s)", "{:.0f}"), ("rss_mb", "RSS MB", "{:.1f}"),
    ("router_cpu", "router CPU", "{:.0%}"), ("other_cpu", "other CPU", "{:.0%}"),
    ("sent_rate", "sent/s", "{:.0f}"),
    ("addresses", "addresses", "{:.0f}"), ("created", "created", "{:.0f}"),
    ("reclaimed", "reclaimed", "{:.0f}"), ("bound_addresses", "bound", "{:.0f}"),
    ("channels", "channels", "{:.0f}"), ("sender_names", "sender names", "{:.0f}"),
    ("queued_reliable", "queued rel", "{:.0f}"), ("queued_location", "queued loc", "{:.0f}"),
    ("offline_backlog", "offline msgs", "{:.0f}"), ("offline_addresses", "offline addr", "{:.0f}"),
    ("peers", "peers", "{:.0f}"), ("e2e_p50_ms", "e2e p50 ms", "{:.1f}"),
    ("e2e_p99_ms", "e2e p99 ms", "{:.1f}"), ("hop_p99_ms", "deliver p99 ms", "{:.1f}"),
    ("router_delivery_p99_ms", "router delivery p99 ms", "{:.0f}"),
    ("pending", "pending", "{:.0f}"), ("journal_mb", "journal MB", "{:.1f}"),
    ("history_mb", "history MB", "{:.0f}"),
]


def _flag(name: str, value) -> str:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    return f"{flag} {shlex.quote(str(value))}"


def _fmt(fmt: str, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return fmt.format(v)


def thirds(rows: list[dict], key: str, seconds: float) -> list[str]:
    """Mean of ``key`` over each third of the run, over all intervals / quiet ones."""
    out = []
    for k in range(3):
        lo, hi = k * seconds / 3, (k + 1) * seconds / 3 + 1e-6
        sel = [r for r in rows if lo <= r["t"] < hi and not math.isnan(r.get(key, math.nan))]
        quiet = [r[key] for r in sel if r.get("other_cpu", math.inf) < QUIET_CPU]
        out.append(f"{statistics.fmean(r[key] for r in sel):.2f} / "
                   + (f"{statistics.fmean(quiet):.2f}" if quiet else "-") if sel else "-")
    return out


def write_report(res: Result, path: Path) -> None:
    o, s, rows = res.opts, res.stats, res.rows
    lines = [f"# Soak: {o.minutes:g} minutes of address churn on one router "
             f"({datetime.date.today().isoformat()})", ""]
    lines += ["`python benchmarks/soak.py " + " ".join(
        _flag(f.name, getattr(o, f.name)) for f in fields(Options)
        if getattr(o, f.name) != f.default and f.name not in ("out", "verbose")) + "`", ""]
    lines += [f"- machine: {machine()} (shared, noisy)",
              f"- versions: {versions(o.router_path or str(ROOT))}"
              + (f"; {o.router_note}" if o.router_note else ""),
              f"- router: `--address-idle-seconds {o.idle_seconds:g} --max-addresses "
              f"{o.max_addresses}` {o.router_args}, journal with fsync, order history on",
              f"- load: {o.rate:g} msg/s offered = {o.rate / (o.order_msgs + o.location_msgs):g} "
              f"orders/s x ({o.order_msgs} ORDER + {o.location_msgs} LOCATION); "
              f"{o.gateways} user gateways + 1 merchant gateway ({o.merchants} merchants) "
              f"+ 1 sender; life {o.life_seconds:g} s; {o.returning:.0%} returning users", ""]
    lines += ["## Targets", "", "| target | result | figures |", "|---|---|---|"]
    lines += [f"| {name} | {'PASS' if ok else 'FAIL'} | {fig} |" for name, ok, fig in res.targets]
    lines += ["", "Flatness: least-squares change over the last two thirds "
              f"(t >= {res.seconds / 3:.0f} s); a series is flat when the change is within "
              f"{o.flat_tolerance:.0%} of its mean or within its absolute floor "
              "(for gauges whose mean is near 0).", "",
              "| series | change | mean | relative | floor | flat |", "|---|---|---|---|---|---|"]
    for key, (change, mean, rel, ok) in res.flat.items():
        lines.append(f"| {key} | {change:+.1f} | {mean:.1f} | {_fmt('{:+.1%}', rel)} | "
                     f"{FLAT_FLOORS.get(key, 0)} | {'yes' if ok else 'NO'} |")
    sent = s.sent_reliable + s.sent_location
    f = res.final
    lines += ["", "## Totals", "",
              f"- churn {res.seconds:.0f} s: {s.orders_started:,} orders, "
              f"{s.users_new:,} new users + {s.users_returning:,} returning; "
              f"{f.get('created', 0):,.0f} addresses created, {f.get('reclaimed', 0):,.0f} "
              f"reclaimed, {f.get('addresses', 0):,.0f} in the table after the drain",
              f"- sent {sent:,} messages ({sent / max(res.seconds, 1e-9):,.0f}/s): "
              f"{s.sent_reliable:,} ORDER, {s.sent_location:,} LOCATION; received "
              f"{s.recv_reliable:,} reliable deliveries (channel fan-out included), "
              f"{s.recv_location:,} locations ({s.recv_location / max(s.sent_location, 1):.1%} "
              "of those sent; best effort, conflated), "
              f"{s.duplicates:,} duplicates dropped, {s.stray} stray",
              f"- DELIVERED {s.delivered_receipts:,}; not delivered: {res.lost} "
              f"({res.still_pending} without any final receipt"
              + (f", {dict(s.not_delivered)}" if s.not_delivered else "") + ")"
              f"; orders closed by the {o.order_timeout:g} s timeout: {s.orders_timed_out}; "
              f"throttled order starts: {s.throttled}",
              f"- ERRORs received: {dict(s.errors) or 'none'}",
              f"- RSS {rows[0]['rss_mb']:.1f} MB at the first sample, "
              f"{max(r['rss_mb'] for r in rows):.1f} MB max, {rows[-1]['rss_mb']:.1f} MB at "
              f"the last; driver RSS {rows[-1]['driver_rss_mb']:.0f} MB"
              if rows else "- no samples",
              f"- disk after the drain: journal {f.get('journal_mb', 0):.1f} MB, history "
              f"{f.get('history_mb', 0):.0f} MB "
              f"({f.get('history_mb', 0) / max(s.orders_started, 1) * 1e6 / 1024:.2f} "
              "GB per million orders; history keeps `history_days`, so it grows by design)",
              f"- p99 SEND->DELIVERED, pooled: first third {res.p99_first_ms:.1f} ms, last "
              f"third {res.p99_last_ms:.1f} ms; median of the interval p99s: "
              f"{res.p99_typical_first_ms:.1f} ms and {res.p99_typical_last_ms:.1f} ms; "
              f"the same over the {res.quiet_intervals} quiet intervals (other tenants "
              f"< {QUIET_CPU} cores): {res.p99_quiet[0]:.1f} ms and {res.p99_quiet[1]:.1f} ms",
              "- router CPU, cores, by third (all intervals / quiet ones): "
              + ", ".join(thirds(rows, "router_cpu", res.seconds)),
              "- other CPU: cores used by processes other than the router and the driver "
              "(other tenants of this machine) per interval: "
              + (f"mean {statistics.fmean(oc):.2f}, max {max(oc):.2f} of {os.cpu_count()}"
                 if (oc := [r['other_cpu'] for r in rows
                            if not math.isnan(r.get('other_cpu', math.nan))]) else "-"),
              ""]
    lines += ["## Over time", "",
              "e2e: SEND to the DELIVERED receipt (the user and, for order.created, the "
              "merchant acked; gateways ack once per driver pass); deliver: SEND to the "
              "user's DELIVER at its gateway; both measured by the driver in one process "
              "on one clock, per sample interval. Router delivery p99: the upper bound of "
              "the `router_delivery_latency_seconds{class=\"order\"}` bucket holding the "
              "interval's p99. Queued/offline/peers: the router's gauges.", ""]
    lines.append("| " + " | ".join(h for _, h, _ in COLUMNS) + " |")
    lines.append("|" + "---|" * len(COLUMNS))
    every = o.table_seconds
    next_t = 0.0
    for i, r in enumerate(rows):
        if every and r["t"] + 1e-6 < next_t and i != len(rows) - 1:
            continue
        next_t = r["t"] + every - o.sample_seconds / 2
        lines.append("| " + " | ".join(_fmt(fmt, r.get(k)) for k, _, fmt in COLUMNS) + " |")
    path.write_text("\n".join(lines) + "\n")


def write_csv(rows: list[dict], path: Path) -> None:
    if not rows:
        return
    keys = list(rows[0])
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def write_plot(res: Result, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: no plot (pip install -e .[bench])", file=sys.stderr)
        return False
    rows = res.rows
    t = [r["t"] / 60 for r in rows]
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5), constrained_layout=True)
    o = res.opts
    fig.suptitle(f"soak: {o.minutes:g} min, {o.rate:g} msg/s offered, address idle "
                 f"{o.idle_seconds:g} s, {res.final.get('created', 0):,.0f} addresses created",
                 fontsize=12)

    def panel(ax, keys, title, ylabel, log=False):
        for key, label in keys:
            ax.plot(t, [r.get(key, math.nan) for r in rows], label=label, lw=1.2)
        ax.axvspan(0, res.seconds / 180, color="0.9", zorder=0)
        ax.set_title(title)
        ax.set_xlabel("minutes")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("symlog", linthresh=1)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    panel(axes[0][0], [("rss_mb", "router RSS")], "router RSS (grey: warm-up third)", "MB")
    panel(axes[0][1], [("addresses", "addresses"), ("bound_addresses", "bound"),
                       ("channels", "channels")], "table sizes", "entries")
    panel(axes[0][2], [("queued_reliable", "queued reliable"),
                       ("queued_location", "queued location"),
                       ("offline_backlog", "offline backlog"), ("pending", "driver pending"),
                       ("sender_names", "sender names"), ("peers", "peers")],
          "queues and small tables", "entries", log=True)
    panel(axes[1][0], [("e2e_p99_ms", "p99 SEND->DELIVERED"),
                       ("hop_p99_ms", "p99 SEND->DELIVER"),
                       ("e2e_p50_ms", "p50 SEND->DELIVERED"),
                       ("router_delivery_p99_ms", "router delivery p99 (bucket)")],
          "latency per sample interval (grey dashes: other tenants' CPU)", "ms")
    ax2 = axes[1][0].twinx()
    ax2.plot(t, [r.get("other_cpu", math.nan) for r in rows], color="0.5", ls="--", lw=1)
    ax2.set_ylim(0, os.cpu_count() or 2)
    ax2.set_ylabel("other CPU, cores")
    panel(axes[1][1], [("created", "created"), ("reclaimed", "reclaimed")],
          "addresses created / reclaimed (cumulative)", "addresses")
    panel(axes[1][2], [("journal_mb", "journal/"), ("history_mb", "history.db")],
          "disk", "MB")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------
# Run


def default_out() -> Path:
    return HERE / f"soak-{datetime.date.today().isoformat()}"


def run(opts: Options) -> Result:
    """One soak run: start the router, churn, drain, sample, evaluate, write the report."""
    out = Path(opts.out) if opts.out else default_out()
    out.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    router = RouterProc(opts, workdir)
    driver = sampler = None
    try:
        router.start()
        driver = Driver(opts, router.url)
        sampler = Sampler(router, driver, opts.verbose)
        seconds = opts.minutes * 60
        driver.run(seconds, sampler.request, opts.sample_seconds, opts.drain_seconds)
        sampler.finish()
        if router.proc.poll() is not None:
            raise RuntimeError(f"router exited with {router.proc.returncode}:\n{router.log()}")
        time.sleep(1.0)  # the metrics snapshot is refreshed every 0.5 s
        final = router_figures(router)
        s = driver.stats
        still = len(driver.pending)
        lost = s.sent_reliable - s.delivered_receipts
        res = Result(opts, sampler.rows, s, seconds, lost, still, final, out=out)
        evaluate(res)
        write_report(res, out.with_suffix(".md"))
        write_csv(res.rows, out.with_suffix(".csv"))
        if opts.plot:
            write_plot(res, out.with_suffix(".png"))
        return res
    finally:
        if driver is not None:
            driver.close()
        router.stop()
        if opts.keep:
            print(f"scratch kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opts = Options(**vars(args))
    res = run(opts)
    for name, ok, fig in res.targets:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {fig}")
    print(f"report: {res.out.with_suffix('.md')}")
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
