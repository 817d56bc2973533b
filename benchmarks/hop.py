"""Hop benchmarks for the core message path: our router against a bare proxy and a
pure-Python loop, all driven by the same native sender and receiver processes.

    python benchmarks/hop.py                          # every scenario, every contender
    python benchmarks/hop.py -s throughput -n 200000  # one scenario, fewer messages
    python benchmarks/hop.py -c proxy,pyloop --markdown benchmarks/RESULTS.md

Contenders (each its own process; sender and receivers are separate processes too):
  proxy   zmq.proxy(ROUTER frontend, DEALER backend)                 benchmarks/proxy.py
  pyloop  a tuned pure-Python ROUTER loop speaking our protocol      benchmarks/pyloop.py
  router  ``python -m router serve --bind tcp://127.0.0.1:PORT``     (skipped until
          ``import router.core`` works; ``--router-cmd`` changes the command line)

Scenarios:
  throughput  best effort (NOTICE), one address, as fast as it goes
  gateways    10,000 addresses bound through 4 GATEWAY connections, the sender cycles
              over them in a fixed random order;
              the connections live in one receiver process (--gateway-procs 1, the
              default) so the trial has the same driver processes as "throughput" and
              the ratio measures the hop; --gateway-procs 4 gives each its own process
  reliable    ORDER class, receiver acks cumulatively, sender waits for DELIVERED receipts
  latency     p50/p99 at fixed offered rates (--rates), --duration seconds each
  fanout      SEND to channel order:1 with 3 members on 3 receivers, p99 at 5k msg/s

Ratios are computed only between figures measured in this run. Throughput is messages
delivered per second between the sender's first send and the last receiver's last
message (CLOCK_MONOTONIC, shared by all processes on the machine).
"""

from __future__ import annotations

import argparse
import array
import json
import os
import platform
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from build import ensure_built  # noqa: E402
from proto import protocol as P  # noqa: E402

DRIVERS = os.path.join(HERE, "drivers.py")
CONTENDERS = ("proxy", "pyloop", "router")
SCENARIOS = ("throughput", "gateways", "reliable", "latency", "fanout")
DEFAULT_ROUTER_CMD = "{python} -m router serve --bind {endpoint}"
CLK_TCK = os.sysconf("SC_CLK_TCK")

#: A trial is "noisy" when processes other than its own used more than this share of
#: the machine's CPU while it ran (see Driver/run_trial: other_cpu_s).
NOISE_SHARE = 0.10

#: Which contenders can run which scenario.
SUPPORTS = {
    "throughput": ("proxy", "pyloop", "router"),
    "gateways": ("pyloop", "router"),
    "reliable": ("router",),
    "latency": ("proxy", "pyloop", "router"),
    "fanout": ("pyloop", "router"),
}
FANOUT_MEMBERS = ("user:7", "merchant:881", "rider:42")


class TrialError(RuntimeError):
    """A trial could not run to the end; the message says which process and why."""


@dataclass
class Options:
    count: int = 500_000
    payload: int = 200
    rates: tuple = (5000, 20000)
    duration: float = 3.0
    fanout_rate: int = 5000
    addresses: int = 10_000
    gateways: int = 4
    gateway_procs: int = 1
    window: int = 20_000
    deadline: float = 60.0
    idle: float = 2.0
    repeat: int = 1
    hwm: int = 0
    router_cmd: str = DEFAULT_ROUTER_CMD
    sender_hold: bool = False
    keep: bool = False
    verbose: bool = True
    workdir: str | None = None


# ---------------------------------------------------------------------------------------
# Processes


_LIVE: list[subprocess.Popen] = []


def _spawn(cmd, log_path, **kw) -> subprocess.Popen:
    log = open(log_path, "wb")
    try:
        proc = subprocess.Popen(cmd, stderr=log, start_new_session=True, **kw)
    finally:
        log.close()
    _LIVE.append(proc)
    return proc


def _end(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """Stop a process this module started (its own process group, by id)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
    if proc in _LIVE:
        _LIVE.remove(proc)


def end_all() -> None:
    for proc in list(_LIVE):
        _end(proc, grace=1.0)


def _tail(path: str, n: int = 2000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - n))
            return fh.read().decode(errors="replace").strip()
    except OSError:
        return ""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def system_busy_s() -> float:
    """CPU seconds spent by the whole machine (all cores, not idle/iowait) since boot."""
    with open("/proc/stat") as fh:
        vals = [int(v) for v in fh.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals[:8]) - idle) / CLK_TCK


def group_cpu_s(pgid: int) -> float:
    """utime+stime (seconds) of every live process in process group ``pgid``."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields[0] is field 3 (state): pgrp is field 5, utime 14, stime 15.
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


class Driver:
    """One sender or receiver process; talks JSON lines on stdout, 'go' on stdin."""

    def __init__(self, role: str, cfg: dict, workdir: str, tag: str,
                 script: str = DRIVERS) -> None:
        """``script`` is the driver program, run as ``script role CONFIG.json``
        (drivers.py here; benchmarks/durability.py passes its own)."""
        self.role = role
        self.tag = tag
        self.cfg_path = os.path.join(workdir, f"{tag}.json")
        self.log_path = os.path.join(workdir, f"{tag}.log")
        with open(self.cfg_path, "w") as fh:
            json.dump(cfg, fh)
        self.proc = _spawn(
            [sys.executable, script, role, self.cfg_path],
            self.log_path,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        self._buf = b""

    def wait(self, event: str, timeout: float) -> dict:
        import select

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
                                 f"log: {_tail(self.log_path)}")
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    self.proc.wait(5)
                    raise TrialError(f"{self.tag}: exited with {self.proc.returncode} before "
                                     f"'{event}'; log: {_tail(self.log_path)}")
                self._buf += chunk

    def send(self, word: str) -> None:
        self.proc.stdin.write(word.encode() + b"\n")
        self.proc.stdin.flush()

    def go(self) -> None:
        self.send("go")

    def close(self) -> None:
        _end(self.proc, grace=2.0)


class Hop:
    """The process under test."""

    name = "?"
    speaks_protocol = True

    def __init__(self, workdir: str, opts: Options) -> None:
        self.workdir = workdir
        self.opts = opts
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(workdir, f"{self.name}.log")

    sender_endpoint = receiver_endpoint = ""

    def start(self) -> None:
        raise NotImplementedError

    def _wait_ready_line(self, timeout: float = 15.0) -> None:
        import select

        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        buf = b""
        while b"READY" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise TrialError(f"{self.name} did not start: {_tail(self.log_path)}")
            ready, _, _ = select.select([fd], [], [], min(left, 0.2))
            if ready:
                buf += os.read(fd, 4096)

    def cpu_s(self) -> float:
        return group_cpu_s(self.proc.pid) if self.proc else 0.0

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise TrialError(f"{self.name} exited with {self.proc.returncode}: "
                             f"{_tail(self.log_path)}")

    def stop(self) -> None:
        if self.proc is not None:
            _end(self.proc)


class ProxyHop(Hop):
    name = "proxy"
    speaks_protocol = False

    def start(self) -> None:
        front, back = free_port(), free_port()
        while back == front:
            back = free_port()
        self.sender_endpoint = f"tcp://127.0.0.1:{front}"
        self.receiver_endpoint = f"tcp://127.0.0.1:{back}"
        self.proc = _spawn(
            [sys.executable, os.path.join(HERE, "proxy.py"), "--frontend",
             self.sender_endpoint, "--backend", self.receiver_endpoint],
            self.log_path, stdout=subprocess.PIPE, cwd=ROOT,
        )
        self._wait_ready_line()


class PyLoopHop(Hop):
    name = "pyloop"

    def start(self) -> None:
        ep = f"tcp://127.0.0.1:{free_port()}"
        self.sender_endpoint = self.receiver_endpoint = ep
        self.proc = _spawn(
            [sys.executable, os.path.join(HERE, "pyloop.py"), "--bind", ep],
            self.log_path, stdout=subprocess.PIPE, cwd=ROOT,
        )
        self._wait_ready_line()


class RouterHop(Hop):
    name = "router"

    def start(self) -> None:
        port = free_port()
        ep = f"tcp://127.0.0.1:{port}"
        self.sender_endpoint = self.receiver_endpoint = ep
        cmd = shlex.split(self.opts.router_cmd.format(
            python=shlex.quote(sys.executable), endpoint=ep, port=port,
            workdir=shlex.quote(self.workdir),
        ))
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        # cwd is the trial's scratch directory, so whatever the router writes stays there.
        self.proc = _spawn(cmd, self.log_path, stdout=subprocess.DEVNULL, cwd=self.workdir,
                           env=env)
        deadline = time.monotonic() + 30
        while not listening(port):
            if self.proc.poll() is not None:
                raise TrialError(f"router exited with {self.proc.returncode} before binding "
                                 f"{ep}: {_tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise TrialError(f"router did not bind {ep} within 30 s: "
                                 f"{_tail(self.log_path)}")
            time.sleep(0.05)


HOPS = {"proxy": ProxyHop, "pyloop": PyLoopHop, "router": RouterHop}


def router_available() -> tuple[bool, str]:
    """Whether ``import router.core`` works (in a fresh interpreter)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import router.core"], cwd=ROOT, capture_output=True,
        text=True, timeout=120,
    )
    if proc.returncode == 0:
        return True, ""
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return False, lines[-1] if lines else f"exit code {proc.returncode}"


# ---------------------------------------------------------------------------------------
# Trials


def gateway_addresses(n: int, gateways: int) -> list[list[str]]:
    """Address i goes to gateway i % gateways."""
    return [[f"user:{i}" for i in range(g, n, gateways)] for g in range(gateways)]


def spread(items: list, procs: int) -> list[list]:
    """Deal ``items`` round-robin into at most ``procs`` non-empty groups."""
    procs = max(1, min(procs, len(items)))
    return [items[i::procs] for i in range(procs)]


def gateway_targets(n: int) -> list[str]:
    """The sender's cycle over the addresses: each once, in a fixed random order (traffic
    to users is not sorted by user id, and a sorted walk would let the CPU's hardware
    prefetcher hide the router's per-address memory cost)."""
    targets = [f"user:{i}" for i in range(n)]
    random.Random(42).shuffle(targets)
    return targets


def expected_per_gateway(count: int, targets: list[str], groups: list[list[str]]) -> list[int]:
    """Messages each gateway (``groups``: its addresses) gets when the sender cycles over
    ``targets``."""
    full, rest = divmod(count, len(targets))
    gateway_of = {a: g for g, addrs in enumerate(groups) for a in addrs}
    per = [0] * len(groups)
    for i, t in enumerate(targets):
        per[gateway_of[t]] += full + (1 if i < rest else 0)
    return per


def build_trial(scenario: str, hop: Hop, opts: Options, rate: float, tmp: str):
    """(sender config, [receiver configs]) for one trial."""
    proto = hop.speaks_protocol
    base = {"connect_timeout": 30, "hwm": opts.hwm, "go_timeout": 120}
    count = opts.count
    if scenario in ("latency", "fanout"):
        count = max(1, int(rate * opts.duration))
    deadline = opts.deadline + (opts.duration if rate else 0)
    sender = dict(base, endpoint=hop.sender_endpoint, count=count, payload=opts.payload,
                  hold=opts.sender_hold,
                  rate=rate, deadline=deadline, msg_class=int(P.MsgClass.NOTICE),
                  hello={"name": "bench-sender"} if proto else None, targets=["user:1"])
    recv = dict(base, endpoint=hop.receiver_endpoint, deadline=deadline + 15,
                idle=opts.idle, index_space=count)
    receivers = []
    if scenario in ("throughput", "latency"):
        receivers.append(dict(
            recv, count=count,
            hello={"role": "ENDPOINT", "name": "bench-endpoint", "addresses": ["user:1"]}
            if proto else None,
            lat_file=os.path.join(tmp, "lat0.bin"),
        ))
    elif scenario == "gateways":
        groups = gateway_addresses(opts.addresses, opts.gateways)
        sender["targets"] = gateway_targets(opts.addresses)
        conns = [({"role": "GATEWAY", "name": f"bench-gw{g}", "addresses": addrs}, n)
                 for g, (addrs, n) in enumerate(zip(groups, expected_per_gateway(
                     count, sender["targets"], groups)))]
        for share in spread(conns, opts.gateway_procs):
            receivers.append(dict(
                recv, count=sum(n for _, n in share), hellos=[h for h, _ in share],
                lat_file=None,
            ))
    elif scenario == "reliable":
        sender.update(msg_class=int(P.MsgClass.ORDER), window=opts.window,
                      wait_terminal=True)
        receivers.append(dict(
            recv, count=count, reliable=True,
            hello={"role": "ENDPOINT", "name": "bench-endpoint", "addresses": ["user:1"]},
            lat_file=os.path.join(tmp, "lat0.bin"),
        ))
    elif scenario == "fanout":
        sender.update(targets=["order:1"], channel=True,
                      joins=[["order:1", list(FANOUT_MEMBERS)]])
        for i, addr in enumerate(FANOUT_MEMBERS):
            receivers.append(dict(
                recv, count=count,
                hello={"role": "ENDPOINT", "name": f"bench-member{i}", "addresses": [addr]},
                lat_file=os.path.join(tmp, f"lat{i}.bin"),
            ))
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    return sender, receivers


def percentiles(values: array.array) -> dict:
    if not values:
        return {}
    s = sorted(values)
    n = len(s)

    def at(p: float) -> float:
        return s[min(n - 1, int(p * n))] / 1000.0  # ns -> us

    return {"p50_us": at(0.50), "p90_us": at(0.90), "p99_us": at(0.99),
            "p999_us": at(0.999), "max_us": s[-1] / 1000.0, "samples": n}


def run_trial(contender: str, scenario: str, opts: Options, rate: float = 0.0) -> dict:
    """Start the hop, the receivers and the sender; return one result row."""
    tmp = tempfile.mkdtemp(prefix=f"hop-{contender}-{scenario}-", dir=opts.workdir)
    hop = HOPS[contender](tmp, opts)
    drivers: list[Driver] = []
    row = {"contender": contender, "scenario": scenario, "rate": rate}
    try:
        hop.start()
        sender_cfg, receiver_cfgs = build_trial(scenario, hop, opts, rate, tmp)
        row["count"] = sender_cfg["count"]
        receivers = [Driver("receiver", cfg, tmp, f"receiver{i}")
                     for i, cfg in enumerate(receiver_cfgs)]
        drivers.extend(receivers)
        ready = [r.wait("ready", 60) for r in receivers]
        sender = Driver("sender", sender_cfg, tmp, "sender")
        drivers.append(sender)
        sready = sender.wait("ready", 60)
        row["welcome"] = (sready.get("welcome") or (ready[0].get("welcome") if ready else None))
        row["pre"] = sready.get("pre")
        hop.check_alive()
        busy0 = system_busy_s()
        t_go = time.monotonic()
        cpu0 = hop.cpu_s()
        for r in receivers:
            r.go()
        sender.go()
        wait_s = sender_cfg["deadline"] + 30
        if opts.sender_hold:
            sender.wait("sent", wait_s)
            rres = [r.wait("result", wait_s) for r in receivers]
            cpu1 = hop.cpu_s()
            sender.send("close")
            sres = sender.wait("result", 30)
        else:
            sres = sender.wait("result", wait_s)
            rres = [r.wait("result", wait_s) for r in receivers]
            cpu1 = hop.cpu_s()
        hop.check_alive()
        # CPU used by anything but this trial's processes while it ran: a noise gauge
        # (approximate: driver CPU is their loop's process time, ticks are 10 ms).
        ours = (cpu1 - cpu0) + (sres.get("cpu_s") or 0) + sum(r.get("cpu_s") or 0 for r in rres)
        other = (system_busy_s() - busy0) - ours
        window = time.monotonic() - t_go
        row.update(summarize_trial(scenario, sres, rres, receiver_cfgs, cpu1 - cpu0))
        row["other_cpu_s"] = max(0.0, other)
        row["window_s"] = window
        row["noisy"] = other > NOISE_SHARE * window * (os.cpu_count() or 1)
        row["sender_result"] = {k: v for k, v in sres.items() if k != "event"}
        row["receiver_results"] = [{k: v for k, v in r.items() if k != "event"} for r in rres]
    except TrialError as exc:
        row["error"] = str(exc)
        if (hop.proc is not None and hop.proc.poll() is not None
                and f"exited with {hop.proc.returncode}" not in row["error"]):
            row["error"] += f"\n[{contender} exit code {hop.proc.returncode}] " \
                            f"{_tail(hop.log_path)}"
    finally:
        for d in drivers:
            d.close()
        hop.stop()
        row["hop_log"] = _tail(hop.log_path, 1500)
        if not opts.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            row["workdir"] = tmp
    return row


def summarize_trial(scenario, sres, rres, rcfgs, hop_cpu_s) -> dict:
    sent = sres["sent"]
    delivered = sum(r["received"] for r in rres)
    expected = sum(c["count"] for c in rcfgs)
    t0 = sres["t_first_ns"]
    t_last = max((r["t_last_ns"] for r in rres if r["received"]), default=t0)
    span = max(1, t_last - t0) / 1e9
    out = {
        "sent": sent,
        "delivered": delivered,
        "expected": expected,
        "lost": expected - delivered,
        "duplicates": sum(r.get("duplicates", 0) for r in rres),
        "out_of_order": sum(r.get("out_of_order", 0) for r in rres),
        "span_s": span,
        "msg_s": delivered / span,
        "send_span_s": max(1, sres["t_last_ns"] - t0) / 1e9,
        "offered_s": sent / (max(1, sres["t_last_ns"] - t0) / 1e9),
        "hop_cpu_s": hop_cpu_s,
        "hop_cpu_us_per_msg": hop_cpu_s * 1e6 / delivered if delivered else None,
        "sender_cpu_s": sres.get("cpu_s"),
        "receiver_cpu_s": [r.get("cpu_s") for r in rres],
        "sender_reason": sres["reason"],
        "receiver_reasons": [r["reason"] for r in rres],
        "sender_eagain": sres["eagain"],
        "max_lag_ms": sres["max_lag_ns"] / 1e6,
        "receipts": sres.get("receipts"),
        "receipt_codes": sres.get("receipt_codes"),
        "errors": sres.get("errors"),
        "control_frames": sum(r.get("control", 0) for r in rres),
        "frames_per_message": max((r.get("frames_per_message", 0) for r in rres), default=0),
    }
    if scenario == "reliable":
        done = (sres.get("receipts") or {}).get("DELIVERED", 0)
        t_end = sres.get("last_terminal_ns") or t0
        out["delivered_receipts"] = done
        out["acked_msg_s"] = done / (max(1, t_end - t0) / 1e9) if done else 0.0
        out["acks_sent"] = sum(r.get("acks_sent", 0) for r in rres)
        out["ack_entries"] = sum(r.get("ack_entries", 0) for r in rres)
        out["not_deliver"] = sum(r.get("not_deliver", 0) + r.get("bad_deliver", 0)
                                 for r in rres)
    lats = array.array("q")
    for c in rcfgs:
        path = c.get("lat_file")
        if path and os.path.exists(path):
            with open(path, "rb") as fh:
                lats.frombytes(fh.read())
    out.update(percentiles(lats))
    return out


# ---------------------------------------------------------------------------------------
# Runs, summaries, reports


def plan(scenarios, contenders, opts: Options):
    """(scenario, contender, rate) in run order; contenders interleaved per repeat."""
    out = []
    for _ in range(opts.repeat):
        for sc in scenarios:
            rates = [0.0]
            if sc == "latency":
                rates = [float(r) for r in opts.rates]
            elif sc == "fanout":
                rates = [float(opts.fanout_rate)]
            for rate in rates:
                for c in contenders:
                    if c in SUPPORTS[sc]:
                        out.append((sc, c, rate))
    return out


def run(scenarios, contenders, opts: Options, log=print) -> list[dict]:
    ensure_built()
    rows = []
    for sc, c, rate in plan(scenarios, contenders, opts):
        label = f"{sc:<10} {c:<7}" + (f" @ {rate:,.0f}/s" if rate else "")
        if opts.verbose:
            log(f"... {label}")
        row = run_trial(c, sc, opts, rate)
        if opts.verbose:
            log("    " + one_line(row))
        rows.append(row)
    return rows


def one_line(row: dict) -> str:
    if "error" in row:
        return "FAILED: " + row["error"].splitlines()[0][:300]
    parts = [f"{row['msg_s']:,.0f} msg/s", f"{row['delivered']:,}/{row['expected']:,}"]
    if row.get("duplicates") or row.get("out_of_order"):
        parts.append(f"dup {row['duplicates']} reordered {row['out_of_order']}")
    if row.get("hop_cpu_us_per_msg"):
        parts.append(f"hop {row['hop_cpu_us_per_msg']:.2f} us CPU/msg")
    if "p99_us" in row:
        parts.append(f"p50 {row['p50_us']:.0f} us p99 {row['p99_us']:.0f} us")
    if "acked_msg_s" in row:
        parts.append(f"acked {row['acked_msg_s']:,.0f} msg/s")
    if row.get("noisy"):
        parts.append(f"NOISY: other processes used {row['other_cpu_s']:.2f} s CPU "
                     f"in {row['window_s']:.1f} s")
    if row.get("receipts"):
        parts.append(f"receipts {row['receipts']}")
    if row.get("errors"):
        parts.append(f"errors {row['errors']}")
    return ", ".join(parts)


def _median(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None and "error" not in r]
    return statistics.median(vals) if vals else None


def summarize(rows: list[dict], quiet_only: bool = True) -> dict:
    """{(scenario, contender, rate): median figures over repeats}.

    With ``quiet_only``, trials marked noisy are left out of a figure's median as long as
    at least one quiet trial of that figure exists.
    """
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["scenario"], r["contender"], r["rate"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        quiet = [r for r in ok if not r.get("noisy")]
        used = quiet if (quiet_only and quiet) else ok
        out[key] = {
            "runs": len(rs),
            "failed": len(rs) - len(ok),
            "used": len(used),
            "quiet": len(quiet),
            "errors": [r["error"] for r in rs if "error" in r],
            **{k: _median(used, k) for k in (
                "msg_s", "acked_msg_s", "hop_cpu_us_per_msg", "p50_us", "p99_us",
                "p999_us", "max_us", "lost", "delivered", "expected", "offered_s",
                "duplicates", "out_of_order", "other_cpu_s")},
        }
    return out


def ratios(summary: dict) -> dict:
    """Every ratio the issue asks for, from figures of this run only."""
    def get(sc, c, key="msg_s", rate=0.0):
        v = summary.get((sc, c, rate), {}).get(key)
        return v if v else None

    def div(a, b):
        return a / b if a is not None and b else None

    out = {
        "router/proxy throughput": div(get("throughput", "router"), get("throughput", "proxy")),
        "router/pyloop throughput": div(get("throughput", "router"),
                                        get("throughput", "pyloop")),
        "pyloop/proxy throughput": div(get("throughput", "pyloop"), get("throughput", "proxy")),
        "router 10k addresses/single": div(get("gateways", "router"),
                                           get("throughput", "router")),
        "pyloop 10k addresses/single": div(get("gateways", "pyloop"),
                                           get("throughput", "pyloop")),
        "router reliable (acked)/proxy": div(get("reliable", "router", "acked_msg_s"),
                                             get("throughput", "proxy")),
        "router reliable (delivered)/proxy": div(get("reliable", "router"),
                                                 get("throughput", "proxy")),
        "router/proxy hop CPU per msg": div(get("throughput", "router", "hop_cpu_us_per_msg"),
                                            get("throughput", "proxy", "hop_cpu_us_per_msg")),
    }
    for (sc, c, rate) in summary:
        if sc == "latency" and c == "router":
            out[f"router/proxy p99 @ {rate:,.0f}/s"] = div(
                get(sc, "router", "p99_us", rate), get(sc, "proxy", "p99_us", rate))
            out[f"router/pyloop p99 @ {rate:,.0f}/s"] = div(
                get(sc, "router", "p99_us", rate), get(sc, "pyloop", "p99_us", rate))
        if sc == "fanout" and c == "router":
            out[f"router/pyloop fan-out p99 @ {rate:,.0f}/s"] = div(
                get(sc, "router", "p99_us", rate), get(sc, "pyloop", "p99_us", rate))
    return {k: v for k, v in out.items() if v is not None}


def environment() -> dict:
    import Cython
    import zmq

    model = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    core = [os.path.join(ROOT, "router", n) for n in os.listdir(os.path.join(ROOT, "router"))
            if n.startswith("core.") and n.endswith(".so")] if os.path.isdir(
                os.path.join(ROOT, "router")) else []
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted": ", ".join(
            line.split(None, 1)[1]
            for line in git("status", "--porcelain", "--untracked-files=no", "--", "router",
                            "ext").splitlines()
            if line.strip()),
        "router_core_built": time.strftime("%Y-%m-%d %H:%M:%S",
                                           time.localtime(os.path.getmtime(core[0])))
        if core else "",
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "cython": Cython.__version__,
    }


def _fmt(v, spec=",.0f", none="-"):
    return none if v is None else format(v, spec)


def markdown(rows: list[dict], opts: Options, notes: list[str] = (),
             env: dict | None = None, when: str | None = None) -> str:
    env = env or environment()
    summary = summarize(rows)
    lines = [
        f"## Hop benchmark, {when or time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores, Linux {env['kernel']}. "
        f"Python {env['python']}, pyzmq {env['pyzmq']} (libzmq {env['libzmq']}), "
        f"Cython {env['cython']}.",
        f"Router: commit {env.get('commit') or '?'}"
        + (f" with uncommitted changes in {env['uncommitted']}" if env.get("uncommitted") else "")
        + (f"; router/core built {env['router_core_built']}"
           if env.get("router_core_built") else "") + ".",
        f"Payload {opts.payload} B; native sender and receiver processes "
        f"(benchmarks/loadgen.pyx); medians over the quiet runs of {opts.repeat} "
        f"(all runs where none was quiet): a run is noisy when other processes used more "
        f"than {NOISE_SHARE:.0%} of the machine's CPU while it ran. Sender "
        + ("stays connected until the receivers are done." if opts.sender_hold
           else "disconnects after its last send."),
        "",
    ]
    for n in notes:
        lines.append(f"- {n}")
    if notes:
        lines.append("")
    scen = {}
    for (sc, c, rate), s in summary.items():
        scen.setdefault(sc, []).append((c, rate, s))
    titles = {
        "throughput": f"Throughput, best effort (NOTICE), one address, {opts.count:,} messages",
        "gateways": f"{opts.addresses:,} addresses through {opts.gateways} gateway "
                    f"connections in {min(opts.gateway_procs, opts.gateways)} receiver "
                    f"process(es), {opts.count:,} messages",
        "reliable": f"Reliable (ORDER), cumulative acks, sender waits for receipts "
                    f"(window {opts.window:,}), {opts.count:,} messages",
        "latency": f"Latency at fixed offered rates, {opts.duration:g} s each",
        "fanout": f"Fan-out to channel order:1 (3 members on 3 receivers), "
                  f"{opts.duration:g} s",
    }
    for sc in SCENARIOS:
        if sc not in scen:
            continue
        lines += [f"### {titles[sc]}", "",
                  "| contender | offered/s | delivered msg/s | acked msg/s | delivered/expected"
                  " | dup/reordered | p50 us | p99 us | p99.9 us | max us | hop CPU us/msg"
                  " | runs used/quiet/all |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c, rate, s in scen[sc]:
            if s["failed"] == s["runs"]:
                err = s["errors"][0].splitlines()[0][:200] if s["errors"] else "failed"
                lines.append(f"| {c} | {_fmt(rate or None)} | FAILED: {err} |||||||||")
                continue
            lines.append(
                f"| {c} | {_fmt(rate or None)} | {_fmt(s['msg_s'])} | "
                f"{_fmt(s['acked_msg_s'])} | {_fmt(s['delivered'])}/{_fmt(s['expected'])} | "
                f"{_fmt(s['duplicates'])}/{_fmt(s['out_of_order'])} | {_fmt(s['p50_us'])} | "
                f"{_fmt(s['p99_us'])} | {_fmt(s['p999_us'])} | "
                f"{_fmt(s['max_us'])} | {_fmt(s['hop_cpu_us_per_msg'], '.2f')} | "
                f"{s['used']}/{s['quiet']}/{s['runs']} |")
        lines.append("")
    failures = [f"{sc}/{c}" + (f" @ {rate:,.0f}/s" if rate else "")
                + f": {s['failed']} of {s['runs']} runs failed: "
                + s["errors"][0].splitlines()[0][:300]
                for (sc, c, rate), s in summary.items() if s["failed"]]
    if failures:
        lines += ["### Failed runs (figures above are medians of the other runs)", ""]
        lines += [f"- {f}" for f in failures]
        lines.append("")
    rat = ratios(summary)
    if rat:
        lines += ["### Ratios (this run)", ""]
        lines += [f"- {k}: **{v:.2f}**" for k, v in rat.items()]
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("-s", "--scenarios", default=",".join(SCENARIOS),
                   help="comma list of " + ", ".join(SCENARIOS))
    p.add_argument("-c", "--contenders", default=",".join(CONTENDERS),
                   help="comma list of " + ", ".join(CONTENDERS))
    p.add_argument("-n", "--count", type=int, default=500_000,
                   help="messages per throughput/gateways/reliable trial")
    p.add_argument("--payload", type=int, default=200, help="payload bytes (>= 16)")
    p.add_argument("--rates", default="5000,20000", help="offered rates for latency, msg/s")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per latency trial")
    p.add_argument("--fanout-rate", type=int, default=5000)
    p.add_argument("--addresses", type=int, default=10_000)
    p.add_argument("--gateways", type=int, default=4)
    p.add_argument("--gateway-procs", type=int, default=1,
                   help="receiver processes the gateway connections are spread over "
                        "(1: same driver processes as the single-address trial)")
    p.add_argument("--window", type=int, default=20_000,
                   help="reliable: max messages in flight without a terminal receipt")
    p.add_argument("--deadline", type=float, default=60.0, help="seconds per trial, at most")
    p.add_argument("--idle", type=float, default=2.0,
                   help="receiver stops after this long without a message")
    p.add_argument("--repeat", type=int, default=1, help="runs per figure (median)")
    p.add_argument("--hwm", type=int, default=0, help="driver socket HWM (0: libzmq default)")
    p.add_argument("--router-cmd", default=DEFAULT_ROUTER_CMD,
                   help="router command line; {python} {endpoint} {port} {workdir}")
    p.add_argument("--sender-hold", action="store_true",
                   help="keep the sender connected until the receivers are done (by "
                        "default it disconnects as soon as its last message is queued)")
    p.add_argument("--skip-router-check", action="store_true",
                   help="run the router even if `import router.core` fails")
    p.add_argument("--markdown", metavar="FILE", help="append the markdown report to FILE")
    p.add_argument("--json", metavar="FILE", help="write every trial row to FILE")
    p.add_argument("--report", metavar="FILE",
                   help="run nothing: print the report of a --json FILE of an earlier run")
    p.add_argument("--keep", action="store_true", help="keep trial directories and logs")
    p.add_argument("-q", "--quiet", action="store_true")
    return p.parse_args(argv)


def options_from(args) -> Options:
    return Options(
        count=args.count, payload=args.payload,
        rates=tuple(int(r) for r in args.rates.split(",") if r),
        duration=args.duration, fanout_rate=args.fanout_rate, addresses=args.addresses,
        gateways=args.gateways, gateway_procs=args.gateway_procs, window=args.window,
        deadline=args.deadline, idle=args.idle,
        repeat=args.repeat, hwm=args.hwm, router_cmd=args.router_cmd, keep=args.keep,
        sender_hold=args.sender_hold,
        verbose=not args.quiet,
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        with open(args.report) as fh:
            saved = json.load(fh)
        opts = Options(**saved["options"])
        report = markdown(saved["rows"], opts, saved.get("notes", []), saved["environment"],
                          saved.get("when"))
        print(report)
        if args.markdown:
            with open(args.markdown, "a") as fh:
                fh.write(report + "\n")
        return 0
    opts = options_from(args)
    scenarios = [s for s in args.scenarios.split(",") if s]
    contenders = [c for c in args.contenders.split(",") if c]
    for s in scenarios:
        if s not in SCENARIOS:
            raise SystemExit(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    for c in contenders:
        if c not in CONTENDERS:
            raise SystemExit(f"unknown contender {c!r}; choose from {', '.join(CONTENDERS)}")
    notes = []
    if "router" in contenders and not args.skip_router_check:
        ok, why = router_available()
        if not ok:
            contenders.remove("router")
            notes.append(f"router skipped: `import router.core` failed ({why})")
            print(f"router skipped: import router.core failed: {why}", file=sys.stderr)
    # Ratios against the single-address and proxy figures need those figures in this run.
    if ({"gateways", "reliable"} & set(scenarios)) and "throughput" not in scenarios:
        scenarios.insert(0, "throughput")
        notes.append("throughput added: the gateways/reliable ratios are taken against it")
    if "reliable" in scenarios and "router" in contenders and "proxy" not in contenders:
        contenders.insert(0, "proxy")

    def on_signal(signum, _frame):
        end_all()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    env_start = environment()
    try:
        rows = run(scenarios, contenders, opts)
    except KeyboardInterrupt:
        end_all()
        return 130
    finally:
        end_all()
    when = time.strftime("%Y-%m-%d %H:%M")
    env = environment()
    for key in ("commit", "uncommitted", "router_core_built"):
        if env.get(key) != env_start.get(key):
            notes.append(f"the router changed during the run: {key} was "
                         f"{env_start.get(key) or '-'!r} at the start, {env.get(key) or '-'!r} "
                         f"at the end")
    report = markdown(rows, opts, notes, env=env, when=when)
    print()
    print(report)
    if args.markdown:
        with open(args.markdown, "a") as fh:
            fh.write(report + "\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": env, "options": asdict(opts), "when": when,
                       "notes": notes, "rows": rows}, fh, indent=1)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
