"""One hop trial: start the contender, its receivers and the sender, measure, stop all."""

from __future__ import annotations

import array
import shutil
import tempfile
import time

from benchmarks.harness.driver_protocol import Driver
from benchmarks.harness.machine import busy_noise, system_busy_s
from benchmarks.harness.procs import TrialError, tail
from benchmarks.harness.stats import percentiles, read_array
from benchmarks.hop.contenders import HOPS, Hop
from benchmarks.hop.options import HopOptions
from benchmarks.hop.scenarios import SCENARIOS, TrialSpec
from benchmarks.proto import protocol as P

DRIVER = "benchmarks.drivers.hop"


def build_trial(scenario: str, hop: Hop, opts: HopOptions, rate: float,
                tmp: str) -> tuple[dict, list[dict]]:
    """(sender config, [receiver configs]) for one trial."""
    sc = SCENARIOS[scenario]
    base = {"connect_timeout": 30, "hwm": opts.hwm, "go_timeout": 120,
            "sockopts": hop.sockopts}
    count = max(1, int(rate * opts.duration)) if sc.paced else opts.count
    deadline = opts.deadline + (opts.duration if rate else 0)
    sender = dict(base, endpoint=hop.sender_endpoint, count=count, payload=opts.payload,
                  hold=opts.sender_hold, pack=opts.pack,
                  rate=rate, deadline=deadline, msg_class=int(P.MsgClass.NOTICE),
                  hello={"name": "bench-sender"} if hop.speaks_protocol else None,
                  targets=["user:1"])
    recv = dict(base, endpoint=hop.receiver_endpoint, deadline=deadline + 15,
                idle=opts.idle, index_space=count, pack=opts.pack)
    receivers = sc.receivers(sender, recv, TrialSpec(opts, count, tmp, hop.speaks_protocol))
    return sender, receivers


def _measure(hop: Hop, sender: Driver, receivers: list[Driver], wait_s: float,
             hold: bool) -> tuple[dict, list[dict], float, dict]:
    """Say "go" and collect the results: (sender's, receivers', hop CPU seconds, hop CPU
    seconds per process of a hop that has several).

    The hop's CPU is read when the receivers are done, before a held sender closes."""
    split0 = hop.cpu_split()
    cpu0 = hop.cpu_s()
    for r in receivers:
        r.go()
    sender.go()
    if hold:
        sender.wait("sent", wait_s)
        rres = [r.wait("result", wait_s) for r in receivers]
        cpu1, split1 = hop.cpu_s(), hop.cpu_split()
        sender.send("close")
        sres = sender.wait("result", 30)
    else:
        sres = sender.wait("result", wait_s)
        rres = [r.wait("result", wait_s) for r in receivers]
        cpu1, split1 = hop.cpu_s(), hop.cpu_split()
    return sres, rres, cpu1 - cpu0, {k: split1[k] - split0.get(k, 0.0) for k in split1}


def run_trial(contender: str, scenario: str, opts: HopOptions, rate: float = 0.0) -> dict:
    """Start the hop, the receivers and the sender; return one result row."""
    tmp = tempfile.mkdtemp(prefix=f"hop-{contender}-{scenario}-", dir=opts.workdir)
    hop = HOPS[contender](tmp, opts)
    drivers: list[Driver] = []
    row = {"contender": contender, "scenario": scenario, "rate": rate}
    try:
        hop.start()
        sender_cfg, receiver_cfgs = build_trial(scenario, hop, opts, rate, tmp)
        row["count"] = sender_cfg["count"]
        receivers = [Driver(DRIVER, "receiver", cfg, tmp, f"receiver{i}")
                     for i, cfg in enumerate(receiver_cfgs)]
        drivers.extend(receivers)
        ready = [r.wait("ready", 60) for r in receivers]
        sender = Driver(DRIVER, "sender", sender_cfg, tmp, "sender")
        drivers.append(sender)
        sready = sender.wait("ready", 60)
        row["welcome"] = (sready.get("welcome") or (ready[0].get("welcome") if ready else None))
        row["pre"] = sready.get("pre")
        hop.check_alive()
        busy0 = system_busy_s()
        t_go = time.monotonic()
        sres, rres, hop_cpu, split = _measure(hop, sender, receivers,
                                              sender_cfg["deadline"] + 30, opts.sender_hold)
        if split:
            row["hop_cpu_split_s"] = split
        hop.check_alive()
        ours = hop_cpu + (sres.get("cpu_s") or 0) + sum(r.get("cpu_s") or 0 for r in rres)
        noise = busy_noise(busy0, t_go, ours)
        row.update(summarize_trial(scenario, sres, rres, receiver_cfgs, hop_cpu))
        row.update(noise)
        row["sender_result"] = {k: v for k, v in sres.items() if k != "event"}
        row["receiver_results"] = [{k: v for k, v in r.items() if k != "event"} for r in rres]
    except TrialError as exc:
        row["error"] = str(exc)
        if (hop.proc is not None and hop.proc.poll() is not None
                and f"exited with {hop.proc.returncode}" not in row["error"]):
            row["error"] += f"\n[{contender} exit code {hop.proc.returncode}] " \
                            f"{tail(hop.log_path)}"
    finally:
        for d in drivers:
            d.close()
        hop.stop()
        row["hop_log"] = tail(hop.log_path, 1500)
        if not opts.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            row["workdir"] = tmp
    return row


def _reliable_figures(sres: dict, rres: list[dict], t0: int) -> dict:
    """Receipt figures of a reliable trial: DELIVERED receipts per second and acks."""
    done = (sres.get("receipts") or {}).get("DELIVERED", 0)
    t_end = sres.get("last_terminal_ns") or t0
    return {
        "delivered_receipts": done,
        "acked_msg_s": done / (max(1, t_end - t0) / 1e9) if done else 0.0,
        "acks_sent": sum(r.get("acks_sent", 0) for r in rres),
        "ack_entries": sum(r.get("ack_entries", 0) for r in rres),
        "not_deliver": sum(r.get("not_deliver", 0) + r.get("bad_deliver", 0) for r in rres),
    }


def summarize_trial(scenario: str, sres: dict, rres: list[dict], rcfgs: list[dict],
                    hop_cpu_s: float) -> dict:
    """A trial's figures from the drivers' results and the receivers' latency files."""
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
        out.update(_reliable_figures(sres, rres, t0))
    lats = array.array("q")
    for c in rcfgs:
        if c.get("lat_file"):
            lats.extend(read_array(c["lat_file"], "q"))
    out.update(percentiles(lats, unit="us", count_key="samples"))
    return out
