"""Durability benchmarks: what the journal, a backlog resume and the metrics endpoint cost.

    python benchmarks/durability.py                       # every scenario (~4 min)
    python benchmarks/durability.py -s throughput,rate --repeat 3
    python benchmarks/durability.py --repeat 3 --markdown benchmarks/RESULTS-durability.md
    python benchmarks/durability.py -h                    # every option

Scenarios (every router is `python -m router serve` with a fresh --data-dir per trial):
  throughput  ORDER class, as fast as a window of unconfirmed messages allows (--window:
              a message counts until its ACCEPTED receipt), an ENDPOINT receiver acking
              cumulatively; per message the time from send to its ACCEPTED receipt.
              Modes: journal+fsync, journal without fsync, no journal (--modes), side by
              side, interleaved per repeat.
  closed      the same with the window counted until the DELIVERED receipt (as in
              hop.py's reliable scenario): acceptance cannot run ahead of delivery.
  rate        the same at a fixed offered rate (--rate, --duration), every mode.
  backlog     --backlog ORDER messages to rider:1 while nobody has bound it; once all are
              ACCEPTED an ENDPOINT says HELLO binding rider:1 with cursor 0: time from
              HELLO to the last DELIVER received, to its acks sent, and to the sender's
              last DELIVERED receipt. Then the same after SIGKILL of the router and a
              restart on the same data directory: the router's replay time (its log
              line), start-up time, and the drain after it.
  metrics     best-effort NOTICE throughput (--metrics-count messages, one address) with
              --metrics-port on and a scraper GETting /metrics every --scrape-interval,
              against metrics off; trials alternate (off,on / on,off ...).
  scrape      the throughput scenario (journal+fsync) with the metrics endpoint on and
              scraped: GET /metrics durations on a router under durable load, and its
              accepted msg/s against the throughput scenario's journal+fsync figure.

All processes are on 127.0.0.1, every wait has a deadline, and every process a trial
starts is stopped (its process group, by id) when the trial ends or the run is
interrupted. The drivers are benchmarks/loadgen.pyx (GIL released, libzmq called
directly); this file is also the driver program (``durability.py sender-driver CFG``).
"""

from __future__ import annotations

import argparse
import array
import atexit
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

from benchmarks.proto import protocol as P  # noqa: E402

DRIVER_ROLES = ("sender-driver", "receiver-driver")
SCENARIOS = ("throughput", "closed", "rate", "backlog", "metrics", "scrape")
#: Journal modes: name -> (--journal, --fsync).
MODES = {
    "fsync": ("true", "true"),
    "nofsync": ("true", "false"),
    "nojournal": ("false", "false"),
}
MODE_TITLES = {"fsync": "journal + fsync", "nofsync": "journal, no fsync",
               "nojournal": "no journal"}
NOISE_SHARE = 0.10
RECOVERY_RE = re.compile(
    r"journal (?P<dir>\S+): (?P<segments>\d+) segments, (?P<records>\d+) records, "
    r"(?P<pending>\d+) messages pending, (?P<seconds>[\d.]+)s")
SERVING_RE = re.compile(r"router serving on ")
FINAL_RE = re.compile(r"final: (?P<line>.*)$", re.M)


# =======================================================================================
# Orchestrator

from benchmarks.drivers.build import ensure_built  # noqa: E402
from benchmarks.harness import machine, procs  # noqa: E402
from benchmarks.harness.driver_protocol import Driver  # noqa: E402

TrialError = procs.TrialError


@dataclass
class Options:
    count: int = 500_000
    window: int = 20_000
    router_window: int = 0  # 0: the router's default --window
    commit_batch: int = 0  # 0: the router's default --commit-batch
    modes: tuple = ("fsync", "nofsync", "nojournal")
    rate: float = 20_000.0
    duration: float = 3.0
    backlog: int = 100_000
    restart: bool = True
    metrics_count: int = 500_000
    scrape_interval: float = 0.1
    payload: int = 200
    kind: str = "order.created"
    deadline: float = 120.0
    idle: float = 2.0
    repeat: int = 1
    router_args: str = ""
    quiet_wait: float = 0.0
    keep: bool = False
    verbose: bool = True
    workdir: str | None = None


# ---------------------------------------------------------------------------------------
# Router process


def router_stamp() -> dict:
    """Router commit, uncommitted files under router/ and ext/, and core build time."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no", "--",
                                      "router", "ext").splitlines() if line.strip()]
    core = [os.path.join(ROOT, "router", n) for n in os.listdir(os.path.join(ROOT, "router"))
            if n.startswith("core.") and n.endswith(".so")]
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted": ", ".join(dirty),
        "core_built": time.strftime("%Y-%m-%d %H:%M:%S",
                                    time.localtime(os.path.getmtime(core[0]))) if core else "",
    }


class RouterProc:
    """One `python -m router serve` process (its own process group)."""

    def __init__(self, workdir: str, data_dir: str, mode: str, opts: Options, *,
                 port: int | None = None, metrics_port: int = 0, tag: str = "router") -> None:
        self.workdir = workdir
        self.data_dir = data_dir
        self.mode = mode
        self.port = port or procs.free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.metrics_port = metrics_port
        self.log_path = os.path.join(workdir, f"{tag}.log")
        journal, fsync = MODES[mode]
        self.cmd = [sys.executable, "-m", "router", "serve", "--bind", self.endpoint,
                    "--data-dir", data_dir, "--journal", journal, "--fsync", fsync,
                    "--history", "false", "--summary-interval", "0"]
        if metrics_port:
            self.cmd += ["--metrics-port", str(metrics_port)]
        if opts.router_window:
            self.cmd += ["--window", str(opts.router_window)]
        if opts.commit_batch:
            self.cmd += ["--commit-batch", str(opts.commit_batch)]
        if opts.router_args:
            import shlex

            self.cmd += shlex.split(opts.router_args)
        self.proc: subprocess.Popen | None = None
        self.t_spawn_ns = self.t_listen_ns = self.t_serving_ns = 0

    def start(self, timeout: float = 60.0, wait_serving: bool = True) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self.t_spawn_ns = time.monotonic_ns()
        self.proc = procs.spawn(self.cmd, self.log_path, stdout=subprocess.DEVNULL,
                               cwd=self.workdir, env=env)
        deadline = time.monotonic() + timeout
        while not procs.listening(self.port):
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
            while not procs.listening(self.metrics_port):
                self._check(deadline, "serving metrics")
                time.sleep(0.01)

    def _check(self, deadline: float, what: str) -> None:
        if self.proc.poll() is not None:
            raise TrialError(f"router exited with {self.proc.returncode} before {what}: "
                             f"{procs.tail(self.log_path)}")
        if time.monotonic() > deadline:
            raise TrialError(f"router not {what} within the deadline: "
                             f"{procs.tail(self.log_path)}")

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def recovery(self) -> dict:
        m = RECOVERY_RE.search(self.log())
        if not m:
            return {}
        return {"segments": int(m["segments"]), "records": int(m["records"]),
                "pending": int(m["pending"]), "replay_s": float(m["seconds"])}

    def final_line(self) -> str:
        m = FINAL_RE.search(self.log())
        return m["line"].strip() if m else ""

    def cpu_s(self) -> float:
        return machine.group_cpu_s(self.proc.pid) if self.proc and self.proc.poll() is None else 0.0

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise TrialError(f"router exited with {self.proc.returncode}: "
                             f"{procs.tail(self.log_path)}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        procs.kill(self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc, grace=10.0)


def _du(path: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass
    return total


# ---------------------------------------------------------------------------------------
# Scraper


class Scraper(threading.Thread):
    """GET /metrics every ``interval`` s (fixed schedule; a late scrape is not repeated)."""

    def __init__(self, port: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.interval = interval
        self.samples: list[tuple[int, float, int, int]] = []  # (start ns, s, status, bytes)
        self.errors: list[str] = []
        self._stop_ev = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        k = 0
        while not self._stop_ev.is_set():
            start = time.monotonic_ns()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:
                    body = resp.read()
                    status = resp.status
            except Exception as exc:  # noqa: BLE001 - record and keep scraping
                body, status = b"", 0
                if len(self.errors) < 20:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
            self.samples.append((start, (time.monotonic_ns() - start) / 1e9, status, len(body)))
            k += 1
            nxt = t0 + k * self.interval
            now = time.monotonic()
            if nxt < now:  # late: skip to the next slot
                k = int((now - t0) / self.interval) + 1
                nxt = t0 + k * self.interval
            self._stop_ev.wait(nxt - now)

    def stop(self) -> None:
        self._stop_ev.set()
        self.join(10)

    def between(self, t0_ns: int, t1_ns: int) -> list[tuple[int, float, int, int]]:
        return [s for s in self.samples if t0_ns <= s[0] <= t1_ns]


# ---------------------------------------------------------------------------------------
# Figures


def _pcts_ns(values) -> dict:
    """p50/p90/p99/p99.9/max of ns values, in ms."""
    s = sorted(values)
    if not s:
        return {}
    n = len(s)

    def at(p):
        return s[min(n - 1, int(p * n))] / 1e6

    return {"p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99), "p999_ms": at(0.999),
            "max_ms": s[-1] / 1e6, "n": n}


def _read(path: str, code: str) -> array.array:
    arr = array.array(code)
    if os.path.exists(path):
        with open(path, "rb") as fh:
            arr.frombytes(fh.read())
    return arr


def receipt_figures(prefix: str, t_first: int) -> dict:
    """Per-message receipt times (the sender's .bin files) -> rates and latencies."""
    snd = _read(prefix + ".send.bin", "q")
    acc = _read(prefix + ".accepted.bin", "q")
    term = _read(prefix + ".terminal.bin", "q")
    st = _read(prefix + ".status.bin", "B")
    delivered = int(P.Status.DELIVERED)
    to_acc = [a - s for a, s in zip(acc, snd) if a and s]
    to_del = [t - s for t, s, c in zip(term, snd, st) if t and s and c == delivered]
    n_acc = len(to_acc)
    n_del = len(to_del)
    last_acc = max(acc) if acc else 0
    last_del = max((t for t, c in zip(term, st) if c == delivered), default=0)
    # Pauses in the stream of ACCEPTED receipts (the router stopped accepting for that
    # long, or the sender stopped reading): the 5 longest, with how many messages had
    # been ACCEPTED before each.
    times = sorted(x for x in acc if x)
    gaps = sorted(((times[k + 1] - times[k]) / 1e6, k + 1) for k in range(len(times) - 1))[-5:]
    out = {
        "accept_gaps": [{"ms": g, "after_accepted": n} for g, n in reversed(gaps)],
        "max_accept_gap_ms": gaps[-1][0] if gaps else None,
        "accepted": n_acc,
        "delivered_receipts": n_del,
        "accepted_msg_s": n_acc / ((last_acc - t_first) / 1e9) if n_acc and last_acc > t_first
        else 0.0,
        "delivered_receipts_msg_s": n_del / ((last_del - t_first) / 1e9)
        if n_del and last_del > t_first else 0.0,
        "accept": _pcts_ns(to_acc),
        "deliver_receipt": _pcts_ns(to_del),
    }
    return out


PF_KTHREAD = 0x00200000


def machine_cpu() -> dict:
    """CPU seconds since boot: user+system of the whole machine (no irq/softirq), irq +
    softirq, and user+system of kernel threads (journal writeback, kworkers)."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    kth = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields[0] is field 3 (state): flags is field 9, utime 14, stime 15.
        if int(fields[6]) & PF_KTHREAD:
            kth += int(fields[11]) + int(fields[12])
    tck = machine.CLK_TCK
    return {"usersys": (v[0] + v[1] + v[2]) / tck, "irq": (v[5] + v[6]) / tck,
            "kthreads": kth / tck, "self": time.process_time(), "t": time.monotonic()}


def _noise(m0: dict, ours: float, m1: dict | None = None) -> dict:
    """Noise gauge: CPU of processes other than this trial's and the kernel's threads.

    ``ours`` is the CPU of the trial's router and drivers; this process (the scraper
    thread included) is added here. Unlike hop.py's gauge this leaves out kernel threads
    and irq/softirq time, which the journal's writeback and loopback TCP spend on the
    trial's behalf (reported as kthread_cpu_s and irq_cpu_s)."""
    m1 = m1 or machine_cpu()
    window = m1["t"] - m0["t"]
    kth = m1["kthreads"] - m0["kthreads"]
    mine = m1["self"] - m0["self"]
    other = max(0.0, (m1["usersys"] - m0["usersys"]) - ours - kth - mine)
    return {"other_cpu_s": other, "kthread_cpu_s": kth, "irq_cpu_s": m1["irq"] - m0["irq"],
            "window_s": window, "noisy": other > NOISE_SHARE * window * (os.cpu_count() or 1)}


def _noise_sum(parts: list[dict]) -> dict:
    """One gauge over several measured windows of a trial (the gaps left out)."""
    out = {k: sum(p[k] for p in parts) for k in ("other_cpu_s", "kthread_cpu_s",
                                                  "irq_cpu_s", "window_s")}
    out["noisy"] = out["other_cpu_s"] > NOISE_SHARE * out["window_s"] * (os.cpu_count() or 1)
    return out


# ---------------------------------------------------------------------------------------
# Trials


class Trial:
    """Scratch directory, processes and the row of one trial."""

    def __init__(self, scenario: str, label: str, opts: Options) -> None:
        self.opts = opts
        self.tmp = tempfile.mkdtemp(prefix=f"dur-{scenario}-{label}-", dir=opts.workdir)
        self.data = os.path.join(self.tmp, "data")
        self.drivers: list[Driver] = []
        self.routers: list[RouterProc] = []
        self.row: dict = {"scenario": scenario, "label": label, **router_stamp()}

    def router(self, mode: str, **kw) -> RouterProc:
        r = RouterProc(self.tmp, self.data, mode, self.opts, **kw)
        self.routers.append(r)
        return r

    def driver(self, role: str, cfg: dict, tag: str) -> Driver:
        cfg = dict({"connect_timeout": 30, "go_timeout": 300}, **cfg)
        d = Driver("benchmarks.drivers.durability", role.replace("-driver", ""), cfg, self.tmp, tag)
        self.drivers.append(d)
        return d

    def close(self) -> dict:
        for d in self.drivers:
            d.close()
        for r in self.routers:
            r.stop()
        if self.routers:
            self.row["router_final"] = self.routers[-1].final_line()
            self.row["router_log"] = procs.tail(self.routers[-1].log_path, 1500)
        if self.opts.keep:
            self.row["workdir"] = self.tmp
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return self.row


def _sender_cfg(opts: Options, endpoint: str, tmp: str, **kw) -> dict:
    cfg = {"endpoint": endpoint, "target": "user:1", "msg_class": int(P.MsgClass.ORDER),
           "kind": opts.kind, "count": opts.count, "payload": opts.payload,
           "window": opts.window, "window_on": "accepted", "wait": "delivered",
           "deadline": opts.deadline, "out_prefix": os.path.join(tmp, "sender")}
    cfg.update(kw)
    return cfg


def _receiver_cfg(opts: Options, endpoint: str, count: int, **kw) -> dict:
    cfg = {"endpoint": endpoint, "addresses": ["user:1"], "count": count, "reliable": True,
           "deadline": opts.deadline + 30, "idle": opts.idle, "index_space": count}
    cfg.update(kw)
    return cfg


def trial_load(scenario: str, mode: str, opts: Options, rate: float = 0.0) -> dict:
    """throughput / rate / scrape: one sender, one acking ENDPOINT, one router."""
    scrape = scenario == "scrape"
    t = Trial(scenario, mode, opts)
    row = t.row
    window_on = "delivered" if scenario == "closed" else "accepted"
    row.update(mode=mode, rate=rate, window=opts.window, window_on=window_on)
    scraper = None
    try:
        mport = procs.free_port() if scrape else 0
        r = t.router(mode, metrics_port=mport)
        r.start()
        count = max(1, int(rate * opts.duration)) if rate else opts.count
        row["count"] = count
        lat_file = os.path.join(t.tmp, "lat.bin")
        recv = t.driver("receiver-driver", _receiver_cfg(opts, r.endpoint, count,
                                                         lat_file=lat_file), "receiver")
        recv.wait("ready", 60)
        snd = t.driver("sender-driver", _sender_cfg(opts, r.endpoint, t.tmp, count=count,
                                                    rate=rate, window_on=window_on), "sender")
        snd.wait("ready", 60)
        if scrape:
            scraper = Scraper(mport, opts.scrape_interval)
            scraper.start()
        busy0 = machine_cpu()
        cpu0 = r.cpu_s()
        go_ns = time.monotonic_ns()
        recv.go()
        snd.go()
        wait_s = opts.deadline + (opts.duration if rate else 0) + 30
        sres = snd.wait("result", wait_s)
        rres = recv.wait("result", wait_s)
        end_ns = time.monotonic_ns()
        cpu1 = r.cpu_s()
        r.check_alive()
        row.update(_noise(busy0, (cpu1 - cpu0) + sres["cpu_s"] + rres["cpu_s"]))
        t_first = sres["t_first_ns"]
        row.update(receipt_figures(os.path.join(t.tmp, "sender"), t_first))
        span = max(1, rres["t_last_ns"] - t_first) / 1e9
        row.update(
            sent=sres["sent"], received=rres["received"],
            received_msg_s=rres["received"] / span if rres["received"] else 0.0,
            duplicates=rres.get("duplicates"), out_of_order=rres.get("out_of_order"),
            offered_s=sres["sent"] / max(1e-9, (sres["t_last_ns"] - t_first) / 1e9),
            receipts=sres.get("receipts"), receipt_codes=sres.get("receipt_codes"),
            errors=sres.get("errors"), sender_reason=sres["reason"],
            receiver_reason=rres["reason"], untracked_receipts=sres.get("untracked_receipts"),
            repeated_receipts=sres.get("repeated_receipts"),
            hop_cpu_s=cpu1 - cpu0,
            hop_cpu_us_per_msg=(cpu1 - cpu0) * 1e6 / rres["received"] if rres["received"]
            else None,
            journal_bytes=_du(t.data),
        )
        row["deliver_latency"] = _pcts_ns(_read(lat_file, "q"))
        if scraper:
            scraper.stop()
            row["scrapes"] = _scrape_stats(scraper, go_ns, end_ns)
            row["journal_metrics"] = journal_metrics(mport)
    except TrialError as exc:
        row["error"] = str(exc)
    finally:
        if scraper and scraper.is_alive():
            scraper.stop()
        t.close()
    return row


def journal_metrics(port: int) -> dict:
    """Group-commit figures from one final scrape (the snapshot is at most 1 s old)."""
    time.sleep(1.2)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except Exception as exc:  # noqa: BLE001
        return {"error": str(exc)}
    vals = {}
    for line in text.splitlines():
        for name in ("router_journal_commits_total", "router_journal_commit_seconds_sum",
                     "router_journal_commit_seconds_count"):
            if line.startswith(name + " "):
                vals[name] = float(line.split()[1])
        if line.startswith('router_receipts_total{status="accepted"}'):
            vals["accepted"] = float(line.split()[1])
    commits = vals.get("router_journal_commits_total") or 0
    out = {"commits": commits}
    if commits:
        out["mean_commit_ms"] = vals.get("router_journal_commit_seconds_sum", 0) / commits * 1e3
        if vals.get("accepted"):
            out["msgs_per_commit"] = vals["accepted"] / commits
    return out


def _scrape_stats(scraper: Scraper, t0_ns: int, t1_ns: int) -> dict:
    during = scraper.between(t0_ns, t1_ns)
    ok = [s for s in during if s[2] == 200]
    durs = sorted(s[1] for s in ok)
    out = {"during": len(during), "ok": len(ok), "all": len(scraper.samples),
           "errors": scraper.errors[:5], "durations_s": durs,
           "bytes": statistics.median([s[3] for s in ok]) if ok else 0}
    return out


def trial_backlog(restart: bool, opts: Options) -> dict:
    """Fill rider:1's offline backlog, (optionally SIGKILL and restart), then drain it."""
    label = "restart" if restart else "live"
    t = Trial("backlog", label, opts)
    row = t.row
    n = opts.backlog
    row.update(case=label, count=n)
    try:
        r = t.router("fsync")
        r.start()
        snd = t.driver("sender-driver", _sender_cfg(
            opts, r.endpoint, t.tmp, target="rider:1", count=n, wait="accepted", hold=True,
            hold_deadline=opts.deadline + 120), "sender")
        snd.wait("ready", 60)
        m0, rc0 = machine_cpu(), r.cpu_s()
        snd.go()
        sent = snd.wait("sent", opts.deadline + 30)
        noise = [_noise(m0, (r.cpu_s() - rc0) + (sent.get("cpu_s") or 0))]
        fill = receipt_figures(os.path.join(t.tmp, "sender"), _read(
            os.path.join(t.tmp, "sender.send.bin"), "q")[0] if n else 0)
        row["fill"] = {k: fill[k] for k in ("accepted", "accepted_msg_s", "accept")}
        row["fill_receipts"] = sent.get("receipts")
        if fill["accepted"] != n:
            raise TrialError(f"only {fill['accepted']} of {n} messages ACCEPTED while "
                             f"filling the backlog; receipts {sent.get('receipts')}")
        row["journal_bytes"] = _du(t.data)
        if restart:
            r.kill9()
            snd.send("close")
            sres = snd.wait("result", 30)
            r2 = t.router("fsync", port=r.port, tag="router2")
            r2.start(wait_serving=True)
            row["startup"] = {
                "spawn_to_listen_s": (r2.t_listen_ns - r2.t_spawn_ns) / 1e9,
                "spawn_to_serving_s": (r2.t_serving_ns - r2.t_spawn_ns) / 1e9,
                **r2.recovery(),
            }
            r = r2
        recv = t.driver("receiver-driver", _receiver_cfg(
            opts, r.endpoint, n, addresses=["rider:1"], hello_on_go=True, cursor=0,
            name="rider-app-1"), "receiver")
        recv.wait("ready", 60)
        m1, cpu0 = machine_cpu(), r.cpu_s()
        recv.go()
        rres = recv.wait("result", opts.deadline + 60)
        cpu1 = r.cpu_s()
        noise.append(_noise(m1, (cpu1 - cpu0) + rres["cpu_s"]))
        if not restart:
            sres = snd.wait("result", 60)
        r.check_alive()
        row.update(_noise_sum(noise))
        th = rres["t_hello_ns"]
        row.update(
            received=rres["received"], duplicates=rres.get("duplicates"),
            out_of_order=rres.get("out_of_order"), min_seq=rres.get("min_seq"),
            max_seq=rres.get("max_seq"), receiver_reason=rres["reason"],
            hello_to_first_s=(rres["t_first_ns"] - th) / 1e9 if rres["received"] else None,
            hello_to_last_s=(rres["t_last_ns"] - th) / 1e9 if rres["received"] else None,
            hello_to_acked_s=(rres["t_done_ns"] - th) / 1e9,
            acks_sent=rres.get("acks_sent"),
            drain_cpu_s=cpu1 - cpu0,
        )
        if not restart:
            t_all = sres.get("t_delivered_all_ns") or 0
            row["hello_to_delivered_receipts_s"] = (t_all - th) / 1e9 if t_all else None
            row["hold_receipts"] = sres.get("hold_receipts")
        if restart and row.get("hello_to_last_s") is not None:
            row["recovered_s"] = row["startup"]["spawn_to_serving_s"] + row["hello_to_last_s"]
    except TrialError as exc:
        row["error"] = str(exc)
    finally:
        t.close()
    return row


def trial_metrics(metrics_on: bool, opts: Options) -> dict:
    """NOTICE throughput to one address, metrics endpoint on (and scraped) or off."""
    label = "on" if metrics_on else "off"
    t = Trial("metrics", label, opts)
    row = t.row
    row.update(metrics=label, count=opts.metrics_count)
    scraper = None
    try:
        mport = procs.free_port() if metrics_on else 0
        r = t.router("fsync", metrics_port=mport)
        r.start()
        n = opts.metrics_count
        lat_file = os.path.join(t.tmp, "lat.bin")
        recv = t.driver("receiver-driver", _receiver_cfg(
            opts, r.endpoint, n, reliable=False, lat_file=lat_file), "receiver")
        recv.wait("ready", 60)
        # The sender stays connected until the receiver is done (hold), so the router's
        # handling of a departed sender (RESULTS.md, observation 1) is not measured here.
        snd = t.driver("sender-driver", _sender_cfg(
            opts, r.endpoint, t.tmp, count=n, msg_class=int(P.MsgClass.NOTICE), kind="",
            hold=True, wait_close=True), "sender")
        snd.wait("ready", 60)
        if metrics_on:
            scraper = Scraper(mport, opts.scrape_interval)
            scraper.start()
            time.sleep(min(0.3, opts.scrape_interval * 2))  # scraping before the load too
        busy0 = machine_cpu()
        cpu0 = r.cpu_s()
        go_ns = time.monotonic_ns()
        recv.go()
        snd.go()
        snd.wait("sent", opts.deadline + 30)
        rres = recv.wait("result", opts.deadline + 30)
        end_ns = time.monotonic_ns()
        cpu1 = r.cpu_s()
        snd.send("close")
        sres = snd.wait("result", 30)
        r.check_alive()
        row.update(_noise(busy0, (cpu1 - cpu0) + sres["cpu_s"] + rres["cpu_s"]))
        t_first = sres["t_first_ns"]
        span = max(1, rres["t_last_ns"] - t_first) / 1e9
        row.update(
            sent=sres["sent"], received=rres["received"],
            msg_s=rres["received"] / span if rres["received"] else 0.0,
            duplicates=rres.get("duplicates"), out_of_order=rres.get("out_of_order"),
            errors=sres.get("errors"), hop_cpu_s=cpu1 - cpu0,
            hop_cpu_us_per_msg=(cpu1 - cpu0) * 1e6 / rres["received"] if rres["received"]
            else None,
            deliver_latency=_pcts_ns(_read(lat_file, "q")),
        )
        if scraper:
            scraper.stop()
            row["scrapes"] = _scrape_stats(scraper, go_ns, end_ns)
    except TrialError as exc:
        row["error"] = str(exc)
    finally:
        if scraper and scraper.is_alive():
            scraper.stop()
        t.close()
    return row


def plan(scenarios, opts: Options) -> list[tuple]:
    out = []
    for i in range(opts.repeat):
        for sc in scenarios:
            if sc in ("throughput", "closed"):
                out += [(sc, m, 0.0) for m in opts.modes]
            elif sc == "rate":
                out += [("rate", m, opts.rate) for m in opts.modes]
            elif sc == "scrape":
                out += [("scrape", "fsync", 0.0), ("scrape", "fsync", opts.rate)]
            elif sc == "backlog":
                out.append(("backlog", "live", 0.0))
                if opts.restart:
                    out.append(("backlog", "restart", 0.0))
            elif sc == "metrics":
                # ABBA: alternate which one goes first so drift cancels out.
                pair = [("metrics", "off", 0.0), ("metrics", "on", 0.0)]
                out += pair if i % 2 == 0 else pair[::-1]
    return out


def run_one(sc: str, label: str, rate: float, opts: Options) -> dict:
    if sc in ("throughput", "closed", "rate", "scrape"):
        return trial_load(sc, label, opts, rate)
    if sc == "backlog":
        return trial_backlog(label == "restart", opts)
    if sc == "metrics":
        return trial_metrics(label == "on", opts)
    raise ValueError(sc)


def wait_quiet(max_s: float, share: float = NOISE_SHARE, sample_s: float = 0.5) -> float:
    """Wait (at most ``max_s``) until the machine's user+system CPU over ``sample_s`` is
    below ``share`` of all cores; return the seconds waited."""
    t0 = time.monotonic()
    cores = os.cpu_count() or 1
    while True:
        a = machine_cpu()
        time.sleep(sample_s)
        b = machine_cpu()
        busy = (b["usersys"] - a["usersys"]) - (b["kthreads"] - a["kthreads"])
        if busy < share * cores * sample_s or time.monotonic() - t0 >= max_s:
            return time.monotonic() - t0


def run(scenarios, opts: Options, log=print) -> list[dict]:
    ensure_built()
    rows = []
    for sc, label, rate in plan(scenarios, opts):
        waited = wait_quiet(opts.quiet_wait) if opts.quiet_wait > 0 else 0.0
        if opts.verbose:
            log(f"... {sc:<10} {label:<9}" + (f" @ {rate:,.0f}/s" if rate else "")
                + (f" (waited {waited:.1f} s for a quiet machine)" if waited > 1 else ""))
        row = run_one(sc, label, rate, opts)
        row["quiet_wait_s"] = waited
        if opts.verbose:
            log("    " + one_line(row))
        rows.append(row)
    return rows


def one_line(row: dict) -> str:
    if "error" in row:
        return "FAILED: " + row["error"].splitlines()[0][:300]
    sc = row["scenario"]
    parts = [f"commit {row.get('commit')}"]
    if sc in ("throughput", "closed", "rate", "scrape"):
        a = row.get("accept") or {}
        parts += [f"accepted {row['accepted']:,} at {row['accepted_msg_s']:,.0f}/s",
                  f"to-ACCEPTED p50 {a.get('p50_ms', 0):.2f} p99 {a.get('p99_ms', 0):.2f} ms",
                  "longest ACCEPTED pause " + ", ".join(
                      f"{g['ms']:.1f} ms after {g['after_accepted']:,}"
                      for g in (row.get("accept_gaps") or [])[:2]),
                  f"received {row['received']:,} at {row['received_msg_s']:,.0f}/s",
                  f"DELIVERED receipts {row['delivered_receipts']:,}"]
        if row.get("receipt_codes"):
            parts.append(f"codes {row['receipt_codes']}")
        if row.get("scrapes"):
            d = row["scrapes"]["durations_s"]
            if d:
                parts.append(f"scrapes {len(d)} p50 {statistics.median(d) * 1e3:.1f} ms "
                             f"max {d[-1] * 1e3:.1f} ms")
    elif sc == "backlog":
        parts += [f"received {row['received']:,}/{row['count']:,}",
                  f"HELLO->last {row.get('hello_to_last_s') or 0:.3f} s"]
        if row.get("startup"):
            parts.append(f"startup {row['startup'].get('spawn_to_serving_s', 0):.2f} s "
                         f"(replay {row['startup'].get('replay_s')} s)")
        if row.get("hello_to_delivered_receipts_s"):
            parts.append(f"HELLO->DELIVERED receipts {row['hello_to_delivered_receipts_s']:.3f} s")
    elif sc == "metrics":
        parts += [f"{row['msg_s']:,.0f} msg/s", f"{row['received']:,}/{row['count']:,}"]
        if row.get("scrapes"):
            d = row["scrapes"]["durations_s"]
            if d:
                parts.append(f"scrapes {len(d)} max {d[-1] * 1e3:.1f} ms")
    if row.get("duplicates") or row.get("out_of_order"):
        parts.append(f"dup {row.get('duplicates')} reordered {row.get('out_of_order')}")
    if row.get("noisy"):
        parts.append(f"NOISY: other processes used {row['other_cpu_s']:.2f} s CPU in "
                     f"{row['window_s']:.1f} s")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------
# Summaries and the report


def _get(row: dict, path: str):
    v = row
    for part in path.split("."):
        if not isinstance(v, dict) or part not in v:
            return None
        v = v[part]
    return v


def _used(rows: list[dict]) -> tuple[list[dict], int]:
    ok = [r for r in rows if "error" not in r]
    quiet = [r for r in ok if not r.get("noisy")]
    return (quiet or ok), len(quiet)


def _med(rows: list[dict], path: str):
    vals = [_get(r, path) for r in rows]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def _commits(rows: list[dict]) -> str:
    seen = []
    for r in rows:
        c = r.get("commit") or "?"
        if r.get("uncommitted"):
            c += "+wip"
        if c not in seen:
            seen.append(c)
    return ", ".join(seen)


def summarize(rows: list[dict]) -> dict:
    """{(scenario, label, rate): {figure: median over quiet runs, runs, quiet, used}}."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["scenario"], r["label"], r.get("rate", 0.0)), []).append(r)
    figures = ("accepted_msg_s", "received_msg_s", "delivered_receipts_msg_s",
               "accept.p50_ms", "accept.p99_ms", "accept.p999_ms", "accept.max_ms",
               "deliver_receipt.p50_ms", "deliver_receipt.p99_ms",
               "deliver_latency.p50_ms", "deliver_latency.p99_ms", "deliver_latency.max_ms",
               "hop_cpu_us_per_msg", "journal_bytes", "accepted", "received", "count",
               "duplicates", "out_of_order", "offered_s", "msg_s",
               "hello_to_first_s", "hello_to_last_s", "hello_to_acked_s",
               "hello_to_delivered_receipts_s", "recovered_s", "startup.spawn_to_listen_s",
               "startup.spawn_to_serving_s", "startup.replay_s", "startup.records",
               "startup.pending", "startup.segments", "fill.accepted_msg_s",
               "fill.accept.p99_ms", "delivered_receipts", "journal_metrics.commits",
               "journal_metrics.mean_commit_ms", "journal_metrics.msgs_per_commit",
               "other_cpu_s", "kthread_cpu_s", "max_accept_gap_ms")
    out = {}
    for key, rs in groups.items():
        used, quiet = _used(rs)
        s = {"runs": len(rs), "failed": sum(1 for r in rs if "error" in r), "quiet": quiet,
             "used": len(used), "commits": _commits(rs),
             "errors": [r["error"] for r in rs if "error" in r]}
        for f in figures:
            s[f] = _med(used, f)
        codes: dict = {}
        for r in used:
            for k, v in (r.get("receipt_codes") or {}).items():
                codes[k] = codes.get(k, 0) + v
        s["receipt_codes"] = codes
        durs = sorted(d for r in used for d in (_get(r, "scrapes.durations_s") or []))
        if durs or any(_get(r, "scrapes") for r in used):
            n = len(durs)
            s["scrape"] = {
                "n": n,
                "p50_ms": durs[n // 2] * 1e3 if n else None,
                "p99_ms": durs[min(n - 1, int(0.99 * n))] * 1e3 if n else None,
                "max_ms": durs[-1] * 1e3 if n else None,
                "failed": sum((_get(r, "scrapes.during") or 0) - (_get(r, "scrapes.ok") or 0)
                              for r in used),
                "bytes": _med(used, "scrapes.bytes"),
            }
        s["per_run_msg_s"] = [r.get("msg_s") for r in rs if "error" not in r]
        out[key] = s
    return out


def summary_rate(summary: dict) -> float:
    return next((k[2] for k in summary if k[0] in ("rate", "scrape") and k[2]), 0.0)


def ratios(summary: dict, rows: list[dict]) -> dict:
    def g(sc, label, f, rate=0.0):
        return (summary.get((sc, label, rate)) or {}).get(f)

    def div(a, b):
        return a / b if a is not None and b else None

    out = {}
    for sc in ("throughput", "closed"):
        tag = "" if sc == "throughput" else " (closed loop)"
        for a, b in (("fsync", "nojournal"), ("nofsync", "nojournal"), ("fsync", "nofsync")):
            out[f"accepted msg/s {a}/{b}{tag}"] = div(g(sc, a, "accepted_msg_s"),
                                                      g(sc, b, "accepted_msg_s"))
            out[f"delivered msg/s {a}/{b}{tag}"] = div(g(sc, a, "received_msg_s"),
                                                       g(sc, b, "received_msg_s"))
    out["metrics on+scraped / off, NOTICE msg/s (medians)"] = div(
        g("metrics", "on", "msg_s"), g("metrics", "off", "msg_s"))
    # Per pair (same repeat): on/off.
    on = [r for r in rows if r["scenario"] == "metrics" and r["label"] == "on"]
    off = [r for r in rows if r["scenario"] == "metrics" and r["label"] == "off"]
    pairs = [x.get("msg_s") / y.get("msg_s") for x, y in zip(on, off)
             if "error" not in x and "error" not in y and y.get("msg_s")]
    if pairs:
        out["metrics on/off, median of per-pair ratios"] = statistics.median(pairs)
    out["durable accepted msg/s, metrics scraped / not (journal+fsync)"] = div(
        g("scrape", "fsync", "accepted_msg_s"), g("throughput", "fsync", "accepted_msg_s"))
    for p in ("p50", "p99"):
        out[f"to-ACCEPTED {p} at {summary_rate(summary):,.0f}/s, metrics scraped / not "
            "(journal+fsync)"] = div(
            g("scrape", "fsync", f"accept.{p}_ms", summary_rate(summary)),
            g("rate", "fsync", f"accept.{p}_ms", summary_rate(summary)))
    return {k: v for k, v in out.items() if v is not None}


def _f(v, spec=",.0f", none="-"):
    return none if v is None else format(v, spec)


def environment_header(env: dict) -> list[str]:
    return [
        "| | |", "|---|---|",
        f"| CPU | {env['cpu']} |",
        f"| cores | {env['cores']} |",
        f"| kernel | Linux {env['kernel']} |",
        f"| Python | {env['python']} |",
        f"| pyzmq | {env['pyzmq']} (libzmq {env['libzmq']}) |",
        f"| Cython | {env['cython']} |",
        f"| journal filesystem | {env.get('fs', '?')} |",
    ]


def _fs_of(path: str) -> str:
    try:
        out = subprocess.run(["df", "-T", path], capture_output=True, text=True,
                             timeout=10).stdout.splitlines()
        dev, typ = out[1].split()[:2]
        return f"{typ} on {dev} ({path})"
    except (OSError, IndexError, ValueError, subprocess.SubprocessError):
        return "?"


def markdown(rows: list[dict], opts: Options, notes=(), env: dict | None = None,
             when: str | None = None) -> str:
    env = env or machine.environment()
    summary = summarize(rows)
    L = [f"## Durability benchmark, {when or time.strftime('%Y-%m-%d %H:%M')}", "",
         f"Machine: {env['cpu']}, {env['cores']} cores, Linux {env['kernel']}. Python "
         f"{env['python']}, pyzmq {env['pyzmq']} (libzmq {env['libzmq']}), Cython "
         f"{env['cython']}. Journal on {env.get('fs', '?')}.",
         f"Router commits seen by the trials: {_commits(rows)} (a +wip suffix would mark "
         "uncommitted changes in router/ or ext/ at the time).",
         f"Payload {opts.payload} B, kind `{opts.kind}`, ORDER class to one address; native "
         f"sender and receiver processes (benchmarks/loadgen.pyx); medians over the quiet runs "
         f"of {opts.repeat} (all runs where none was quiet): a run is noisy when other "
         f"processes used more than {NOISE_SHARE:.0%} of the machine's CPU while it ran. "
         "Routers run with `--history false --summary-interval 0` and a fresh `--data-dir`"
         + (f", plus `{opts.router_args}`" if opts.router_args else "")
         + (f", `--window {opts.router_window}`" if opts.router_window else "")
         + (f", `--commit-batch {opts.commit_batch}`" if opts.commit_batch else "") + ".",
         ""]
    L += [f"- {n}" for n in notes]
    if notes:
        L.append("")

    def table_load(sc, title):
        keys = [k for k in summary if k[0] == sc]
        if not keys:
            return
        L.extend([f"### {title}", "",
                  "| mode | offered/s | accepted msg/s | to-ACCEPTED p50 / p99 / p99.9 / max ms"
                  " | longest pause in ACCEPTED ms | received msg/s | DELIVERED receipts msg/s | to-DELIVERED p50 / p99 ms"
                  " | delivered / sent | refused | router CPU us/msg | journal MB"
                  " | runs used/quiet/all | router commit |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"])
        for key in sorted(keys, key=lambda k: list(MODES).index(k[1])):
            s = summary[key]
            if s["failed"] == s["runs"]:
                L.append(f"| {MODE_TITLES[key[1]]} | FAILED: "
                         f"{s['errors'][0].splitlines()[0][:200]} ||||||||||||| ")
                continue
            codes = ", ".join(f"{k} {v}" for k, v in s["receipt_codes"].items()) or "0"
            L.append(
                f"| {MODE_TITLES[key[1]]} | {_f(key[2] or None)} | {_f(s['accepted_msg_s'])} | "
                f"{_f(s['accept.p50_ms'], '.2f')} / {_f(s['accept.p99_ms'], '.2f')} / "
                f"{_f(s['accept.p999_ms'], '.2f')} / {_f(s['accept.max_ms'], '.2f')} | "
                f"{_f(s['max_accept_gap_ms'], '.1f')} | {_f(s['received_msg_s'])} | {_f(s['delivered_receipts_msg_s'])} | "
                f"{_f(s['deliver_receipt.p50_ms'], '.2f')} / "
                f"{_f(s['deliver_receipt.p99_ms'], '.2f')} | "
                f"{_f(s['delivered_receipts'])} / {_f(s['count'])} | {codes} | "
                f"{_f(s['hop_cpu_us_per_msg'], '.2f')} | "
                f"{_f((s['journal_bytes'] or 0) / 1e6, '.1f')} | "
                f"{s['used']}/{s['quiet']}/{s['runs']} | {s['commits']} |")
        L.append("")

    table_load("throughput", f"Durable reliable throughput: ORDER, {opts.count:,} messages, "
                             f"at most {opts.window:,} without an ACCEPTED receipt, receiver "
                             "acks cumulatively")
    table_load("closed", f"Closed loop: the same with at most {opts.window:,} messages "
                         "without a DELIVERED receipt")
    table_load("rate", f"At a fixed offered rate: {opts.rate:,.0f} msg/s for "
                       f"{opts.duration:g} s")
    table_load("scrape", f"Journal + fsync with /metrics scraped every "
                         f"{opts.scrape_interval * 1000:.0f} ms: saturation "
                         f"({opts.count:,} messages) and {opts.rate:,.0f} msg/s")
    bl = [k for k in summary if k[0] == "backlog"]
    if bl:
        L.extend([f"### Resume of a {opts.backlog:,}-message backlog (journal + fsync), "
                  "ENDPOINT HELLO rider:1 cursor 0", "",
                  "| case | fill: accepted msg/s | router start-up: spawn to serving s "
                  "| replay (router log) s | records / pending | HELLO to 1st DELIVER s "
                  "| HELLO to last DELIVER s | HELLO to acks sent s | HELLO to last DELIVERED "
                  "receipt s | start-up + drain s | received / dup / reordered "
                  "| runs used/quiet/all | router commit |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"])
        for key in sorted(bl, key=lambda k: k[1] != "live"):
            s = summary[key]
            if s["failed"] == s["runs"]:
                L.append(f"| {key[1]} | FAILED: {s['errors'][0].splitlines()[0][:200]} "
                         "|||||||||||")
                continue
            L.append(
                f"| {'SIGKILL + restart' if key[1] == 'restart' else 'router kept running'} | "
                f"{_f(s['fill.accepted_msg_s'])} | {_f(s['startup.spawn_to_serving_s'], '.2f')}"
                f" | {_f(s['startup.replay_s'], '.2f')} | {_f(s['startup.records'])} / "
                f"{_f(s['startup.pending'])} | {_f(s['hello_to_first_s'], '.3f')} | "
                f"{_f(s['hello_to_last_s'], '.3f')} | {_f(s['hello_to_acked_s'], '.3f')} | "
                f"{_f(s['hello_to_delivered_receipts_s'], '.3f')} | "
                f"{_f(s['recovered_s'], '.2f')} | {_f(s['received'])} / {_f(s['duplicates'])}"
                f" / {_f(s['out_of_order'])} | {s['used']}/{s['quiet']}/{s['runs']} | "
                f"{s['commits']} |")
        L.append("")
    mk = [k for k in summary if k[0] == "metrics"]
    if mk:
        L.extend([f"### Metrics cost: NOTICE, one address, {opts.metrics_count:,} messages, "
                  f"scraped every {opts.scrape_interval * 1000:.0f} ms", "",
                  "| metrics | delivered msg/s (median) | per run | delivered / sent "
                  "| router CPU us/msg | scrapes during load | GET p50 / p99 / max ms "
                  "| runs used/quiet/all | router commit |",
                  "|---|---|---|---|---|---|---|---|---|"])
        for key in sorted(mk, key=lambda k: k[1] != "off"):
            s = summary[key]
            sc = s.get("scrape") or {}
            L.append(
                f"| {key[1]} | {_f(s['msg_s'])} | "
                f"{', '.join(_f(v) for v in s['per_run_msg_s'])} | {_f(s['received'])} / "
                f"{_f(s['count'])} | {_f(s['hop_cpu_us_per_msg'], '.2f')} | "
                f"{_f(sc.get('n'))} | {_f(sc.get('p50_ms'), '.1f')} / "
                f"{_f(sc.get('p99_ms'), '.1f')} / {_f(sc.get('max_ms'), '.1f')} | "
                f"{s['used']}/{s['quiet']}/{s['runs']} | {s['commits']} |")
        L.append("")
    scr = [(k, s) for k, s in summary.items() if s.get("scrape")]
    if scr:
        L.extend(["### GET /metrics duration on a busy router (scrapes that started while "
                  "the load ran; the runs used above)", "",
                  "| load | scrapes | failed | p50 ms | p99 ms | max ms | response bytes "
                  "| group commits: mean ms / ACCEPTED per commit |",
                  "|---|---|---|---|---|---|---|---|"])
        for (sc_, label, rate), s in scr:
            load = ("NOTICE, as fast as it goes" if sc_ == "metrics"
                    else "ORDER, journal + fsync, "
                    + (f"{rate:,.0f} msg/s" if rate else "as fast as it goes"))
            c = s["scrape"]
            L.append(f"| {load} | {_f(c['n'])} | {_f(c['failed'])} | {_f(c['p50_ms'], '.1f')}"
                     f" | {_f(c['p99_ms'], '.1f')} | {_f(c['max_ms'], '.1f')} | "
                     f"{_f(c['bytes'])} | {_f(s['journal_metrics.mean_commit_ms'], '.2f')} / "
                     f"{_f(s['journal_metrics.msgs_per_commit'], '.0f')} |")
        L.append("")
    fails = [f"{k[0]}/{k[1]}: {s['failed']} of {s['runs']} runs failed: "
             + s["errors"][0].splitlines()[0][:300] for k, s in summary.items() if s["failed"]]
    if fails:
        L += ["### Failed runs", ""] + [f"- {f}" for f in fails] + [""]
    rat = ratios(summary, rows)
    if rat:
        L += ["### Ratios (this run)", ""] + [f"- {k}: **{v:.2f}**" for k, v in rat.items()]
        L.append("")
    return "\n".join(L)


# ---------------------------------------------------------------------------------------
# CLI


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("-s", "--scenarios", default=",".join(SCENARIOS),
                   help="comma list of " + ", ".join(SCENARIOS))
    p.add_argument("--modes", default=",".join(MODES), help="comma list of " + ", ".join(MODES))
    p.add_argument("-n", "--count", type=int, default=500_000,
                   help="messages per throughput/scrape trial")
    p.add_argument("--window", type=int, default=20_000,
                   help="sender: unconfirmed messages in flight at most")
    p.add_argument("--router-window", type=int, default=0,
                   help="router --window (deliveries in flight per address); 0: default")
    p.add_argument("--commit-batch", type=int, default=0, help="router --commit-batch")
    p.add_argument("--rate", type=float, default=20_000, help="rate scenario: msg/s")
    p.add_argument("--duration", type=float, default=3.0, help="rate scenario: seconds")
    p.add_argument("--backlog", type=int, default=100_000, help="backlog scenario: messages")
    p.add_argument("--no-restart", action="store_true",
                   help="backlog: skip the SIGKILL + restart case")
    p.add_argument("--metrics-count", type=int, default=500_000,
                   help="metrics scenario: NOTICE messages per trial")
    p.add_argument("--scrape-interval", type=float, default=0.1, help="seconds between GETs")
    p.add_argument("--payload", type=int, default=200, help="payload bytes (>= 16)")
    p.add_argument("--deadline", type=float, default=120.0, help="seconds per phase, at most")
    p.add_argument("--repeat", type=int, default=1, help="runs per figure (median)")
    p.add_argument("--router-args", default="", help="extra `router serve` arguments")
    p.add_argument("--quiet-wait", type=float, default=30.0,
                   help="before each trial wait up to this many seconds until other "
                        "processes use less than 10%% of the machine (0: don't wait)")
    p.add_argument("--markdown", metavar="FILE", help="append the markdown report to FILE")
    p.add_argument("--json", metavar="FILE", help="write every trial row to FILE")
    p.add_argument("--report", metavar="FILE",
                   help="run nothing: print the report of a --json FILE of an earlier run")
    p.add_argument("--keep", action="store_true", help="keep trial directories and logs")
    p.add_argument("-q", "--quiet", action="store_true")
    return p.parse_args(argv)


def options_from(args) -> Options:
    modes = tuple(m for m in args.modes.split(",") if m)
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    return Options(
        count=args.count, window=args.window,
        router_window=args.router_window, commit_batch=args.commit_batch, modes=modes,
        rate=args.rate, duration=args.duration, backlog=args.backlog,
        restart=not args.no_restart, metrics_count=args.metrics_count,
        scrape_interval=args.scrape_interval, payload=args.payload, deadline=args.deadline,
        repeat=args.repeat, router_args=args.router_args, keep=args.keep,
        quiet_wait=args.quiet_wait,
        verbose=not args.quiet,
    )


def _append_markdown(path: str, report: str, env: dict) -> None:
    """Append ``report``; a new file starts with a title and the machine table."""
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a") as fh:
        if new:
            fh.write("# Durability benchmark results\n\n"
                     "Measured with `benchmarks/durability.py` (its docstring says what each "
                     "scenario does; the drivers are those of benchmarks/README.md). Every "
                     "figure was measured on this machine by the run named.\n\n## Machine and versions\n\n"
                     + "\n".join(environment_header(env)) + "\n\n")
        fh.write(report + "\n")


def full_environment() -> dict:
    env = machine.environment()
    env["fs"] = _fs_of(tempfile.gettempdir())
    return env


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        with open(args.report) as fh:
            saved = json.load(fh)
        opts = Options(**{**saved["options"], "modes": tuple(saved["options"]["modes"])})
        report = markdown(saved["rows"], opts, saved.get("notes", []), saved["environment"],
                          saved.get("when"))
        print(report)
        if args.markdown:
            _append_markdown(args.markdown, report, saved["environment"])
        return 0
    opts = options_from(args)
    scenarios = [s for s in args.scenarios.split(",") if s]
    for s in scenarios:
        if s not in SCENARIOS:
            raise SystemExit(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    ok, why = machine.router_available()
    if not ok:
        print(f"router unavailable: import router.core failed: {why}", file=sys.stderr)
        return 2
    notes = []
    if "scrape" in scenarios and "throughput" not in scenarios:
        notes.append("the scrape scenario's throughput ratio needs the throughput scenario "
                     "in the same run; none taken")

    def on_signal(signum, _frame):
        procs.stop_all()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    atexit.register(procs.stop_all)
    start = router_stamp()
    try:
        rows = run(scenarios, opts)
    except KeyboardInterrupt:
        procs.stop_all()
        return 130
    finally:
        procs.stop_all()
    end = router_stamp()
    for k in ("commit", "uncommitted", "core_built"):
        if start.get(k) != end.get(k):
            notes.append(f"the router changed during the run: {k} was {start.get(k) or '-'!r}"
                         f" at the start, {end.get(k) or '-'!r} at the end")
    when = time.strftime("%Y-%m-%d %H:%M")
    env = full_environment()
    report = markdown(rows, opts, notes, env=env, when=when)
    print()
    print(report)
    if args.markdown:
        _append_markdown(args.markdown, report, env)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": env, "options": asdict(opts), "when": when,
                       "notes": notes, "rows": rows}, fh, indent=1)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
