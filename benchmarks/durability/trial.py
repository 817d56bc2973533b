"""What every durability trial shares: its scratch directory and processes, the driver
configs, and the figures taken from the sender's per-message receipt times."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import TYPE_CHECKING

from benchmarks.durability.router import RouterProc
from benchmarks.harness.driver_protocol import Driver
from benchmarks.harness.machine import router_stamp
from benchmarks.harness.procs import tail
from benchmarks.harness.stats import percentiles, read_array
from benchmarks.proto import protocol as P

if TYPE_CHECKING:
    from benchmarks.durability.options import DurabilityOptions

DRIVER = "benchmarks.drivers.durability"


def latency_ms(values) -> dict:
    """p50/p90/p99/p99.9/max of nanosecond values, in ms (``n``: how many)."""
    return percentiles(values, unit="ms", count_key="n")


class Trial:
    """Scratch directory, processes and the row of one trial."""

    def __init__(self, scenario: str, label: str, opts: DurabilityOptions) -> None:
        self.opts = opts
        self.tmp = tempfile.mkdtemp(prefix=f"dur-{scenario}-{label}-", dir=opts.workdir)
        self.data = os.path.join(self.tmp, "data")
        self.drivers: list[Driver] = []
        self.routers: list[RouterProc] = []
        self.row: dict = {"scenario": scenario, "label": label, **router_stamp()}

    def router(self, mode: str, **kw) -> RouterProc:
        """A router on this trial's data directory (not started yet)."""
        r = RouterProc(self.tmp, self.data, mode, self.opts, **kw)
        self.routers.append(r)
        return r

    def driver(self, role: str, cfg: dict, tag: str) -> Driver:
        """Start a driver process ("sender" or "receiver") with ``cfg``."""
        cfg = dict({"connect_timeout": 30, "go_timeout": 300}, **cfg)
        d = Driver(DRIVER, role, cfg, self.tmp, tag)
        self.drivers.append(d)
        return d

    def path(self, name: str) -> str:
        """A file in the trial's scratch directory."""
        return os.path.join(self.tmp, name)

    def close(self) -> dict:
        """Stop everything, keep the last router's final line and log; the row."""
        for d in self.drivers:
            d.close()
        for r in self.routers:
            r.stop()
        if self.routers:
            self.row["router_final"] = self.routers[-1].final_line()
            self.row["router_log"] = tail(self.routers[-1].log_path, 1500)
        if self.opts.keep:
            self.row["workdir"] = self.tmp
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return self.row


def sender_cfg(opts: DurabilityOptions, endpoint: str, tmp: str, **kw) -> dict:
    """An ORDER sender to user:1 that waits for DELIVERED receipts; ``kw`` overrides."""
    cfg = {"endpoint": endpoint, "target": "user:1", "msg_class": int(P.MsgClass.ORDER),
           "kind": opts.kind, "count": opts.count, "payload": opts.payload,
           "window": opts.window, "window_on": "accepted", "wait": "delivered",
           "deadline": opts.deadline, "out_prefix": os.path.join(tmp, "sender")}
    cfg.update(kw)
    return cfg


def receiver_cfg(opts: DurabilityOptions, endpoint: str, count: int, **kw) -> dict:
    """An acking ENDPOINT on user:1 expecting ``count`` messages; ``kw`` overrides."""
    cfg = {"endpoint": endpoint, "addresses": ["user:1"], "count": count, "reliable": True,
           "deadline": opts.deadline + 30, "idle": opts.idle, "index_space": count}
    cfg.update(kw)
    return cfg


def _accept_gaps(acc) -> list[tuple[float, int]]:
    """The 5 longest pauses in the stream of ACCEPTED receipts (the router stopped
    accepting for that long, or the sender stopped reading), shortest first, each with
    how many messages had been ACCEPTED before it."""
    times = sorted(x for x in acc if x)
    return sorted(((times[k + 1] - times[k]) / 1e6, k + 1)
                  for k in range(len(times) - 1))[-5:]


def receipt_figures(prefix: str, t_first: int) -> dict:
    """Per-message receipt times (the sender's .bin files) -> rates and latencies."""
    snd = read_array(prefix + ".send.bin", "q")
    acc = read_array(prefix + ".accepted.bin", "q")
    term = read_array(prefix + ".terminal.bin", "q")
    st = read_array(prefix + ".status.bin", "B")
    delivered = int(P.Status.DELIVERED)
    to_acc = [a - s for a, s in zip(acc, snd) if a and s]
    to_del = [t - s for t, s, c in zip(term, snd, st) if t and s and c == delivered]
    n_acc = len(to_acc)
    n_del = len(to_del)
    last_acc = max(acc) if acc else 0
    last_del = max((t for t, c in zip(term, st) if c == delivered), default=0)
    gaps = _accept_gaps(acc)
    return {
        "accept_gaps": [{"ms": g, "after_accepted": n} for g, n in reversed(gaps)],
        "max_accept_gap_ms": gaps[-1][0] if gaps else None,
        "accepted": n_acc,
        "delivered_receipts": n_del,
        "accepted_msg_s": n_acc / ((last_acc - t_first) / 1e9) if n_acc and last_acc > t_first
        else 0.0,
        "delivered_receipts_msg_s": n_del / ((last_del - t_first) / 1e9)
        if n_del and last_del > t_first else 0.0,
        "accept": latency_ms(to_acc),
        "deliver_receipt": latency_ms(to_del),
    }
