"""backlog: --backlog ORDER messages to rider:1 while nobody has bound it; once all are
ACCEPTED an ENDPOINT says HELLO binding rider:1 with cursor 0: time from HELLO to the
last DELIVER received, to its acks sent, and to the sender's last DELIVERED receipt.
Then the same after SIGKILL of the router and a restart on the same data directory: the
router's replay time (its log line), start-up time, and the drain after it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks.durability.router import RouterProc, disk_usage
from benchmarks.durability.scenarios.base import Scenario
from benchmarks.durability.trial import Trial, receipt_figures, receiver_cfg, sender_cfg
from benchmarks.harness.driver_protocol import Driver
from benchmarks.harness.machine import machine_cpu, noise_gauge, noise_total
from benchmarks.harness.procs import TrialError
from benchmarks.harness.report import first_line, fmt, runs_cell, table_head
from benchmarks.harness.stats import read_array

if TYPE_CHECKING:
    from benchmarks.durability.options import DurabilityOptions

COLUMNS = ("case", "fill: accepted msg/s", "router start-up: spawn to serving s",
           "replay (router log) s", "records / pending", "HELLO to 1st DELIVER s",
           "HELLO to last DELIVER s", "HELLO to acks sent s",
           "HELLO to last DELIVERED receipt s", "start-up + drain s",
           "received / dup / reordered", "runs used/quiet/all", "router commit")


def _fill(t: Trial, r: RouterProc, n: int, opts: DurabilityOptions) -> tuple[Driver, dict]:
    """Send the backlog and wait until every message is ACCEPTED; (held sender, noise)."""
    row = t.row
    snd = t.driver("sender", sender_cfg(
        opts, r.endpoint, t.tmp, target="rider:1", count=n, wait="accepted", hold=True,
        hold_deadline=opts.deadline + 120), "sender")
    snd.wait("ready", 60)
    m0, rc0 = machine_cpu(), r.cpu_s()
    snd.go()
    sent = snd.wait("sent", opts.deadline + 30)
    noise = noise_gauge(m0, (r.cpu_s() - rc0) + (sent.get("cpu_s") or 0))
    fill = receipt_figures(t.path("sender"),
                           read_array(t.path("sender.send.bin"), "q")[0] if n else 0)
    row["fill"] = {k: fill[k] for k in ("accepted", "accepted_msg_s", "accept")}
    row["fill_receipts"] = sent.get("receipts")
    if fill["accepted"] != n:
        raise TrialError(f"only {fill['accepted']} of {n} messages ACCEPTED while "
                         f"filling the backlog; receipts {sent.get('receipts')}")
    row["journal_bytes"] = disk_usage(t.data)
    return snd, noise


def _crash_and_restart(t: Trial, r: RouterProc, snd: Driver) -> tuple[RouterProc, dict]:
    """SIGKILL the router, end the sender, start a new router on the same data; (the new
    router, the sender's result)."""
    r.kill9()
    snd.send("close")
    sres = snd.wait("result", 30)
    r2 = t.router("fsync", port=r.port, tag="router2")
    r2.start(wait_serving=True)
    t.row["startup"] = {
        "spawn_to_listen_s": (r2.t_listen_ns - r2.t_spawn_ns) / 1e9,
        "spawn_to_serving_s": (r2.t_serving_ns - r2.t_spawn_ns) / 1e9,
        **r2.recovery(),
    }
    return r2, sres


def _drain_figures(rres: dict, drain_cpu_s: float) -> dict:
    """How the bound ENDPOINT received the backlog, timed from its HELLO."""
    th = rres["t_hello_ns"]
    got = rres["received"]
    return dict(
        received=got, duplicates=rres.get("duplicates"),
        out_of_order=rres.get("out_of_order"), min_seq=rres.get("min_seq"),
        max_seq=rres.get("max_seq"), receiver_reason=rres["reason"],
        hello_to_first_s=(rres["t_first_ns"] - th) / 1e9 if got else None,
        hello_to_last_s=(rres["t_last_ns"] - th) / 1e9 if got else None,
        hello_to_acked_s=(rres["t_done_ns"] - th) / 1e9,
        acks_sent=rres.get("acks_sent"),
        drain_cpu_s=drain_cpu_s,
    )


def trial_backlog(restart: bool, opts: DurabilityOptions) -> dict:
    """Fill rider:1's offline backlog, (optionally SIGKILL and restart), then drain it."""
    label = "restart" if restart else "live"
    t = Trial("backlog", label, opts)
    row = t.row
    n = opts.backlog
    row.update(case=label, count=n)
    try:
        r = t.router("fsync")
        r.start()
        snd, fill_noise = _fill(t, r, n, opts)
        if restart:
            r, sres = _crash_and_restart(t, r, snd)
        recv = t.driver("receiver", receiver_cfg(
            opts, r.endpoint, n, addresses=["rider:1"], hello_on_go=True, cursor=0,
            name="rider-app-1"), "receiver")
        recv.wait("ready", 60)
        m1, cpu0 = machine_cpu(), r.cpu_s()
        recv.go()
        rres = recv.wait("result", opts.deadline + 60)
        cpu1 = r.cpu_s()
        drain_noise = noise_gauge(m1, (cpu1 - cpu0) + rres["cpu_s"])
        if not restart:
            sres = snd.wait("result", 60)
        r.check_alive()
        row.update(noise_total([fill_noise, drain_noise]))
        row.update(_drain_figures(rres, cpu1 - cpu0))
        if not restart:
            t_all = sres.get("t_delivered_all_ns") or 0
            th = rres["t_hello_ns"]
            row["hello_to_delivered_receipts_s"] = (t_all - th) / 1e9 if t_all else None
            row["hold_receipts"] = sres.get("hold_receipts")
        if restart and row.get("hello_to_last_s") is not None:
            row["recovered_s"] = row["startup"]["spawn_to_serving_s"] + row["hello_to_last_s"]
    except TrialError as exc:
        row["error"] = str(exc)
    finally:
        t.close()
    return row


def line(row: dict) -> list[str]:
    """Received, HELLO to last DELIVER, start-up and replay."""
    parts = [f"received {row['received']:,}/{row['count']:,}",
             f"HELLO->last {row.get('hello_to_last_s') or 0:.3f} s"]
    if row.get("startup"):
        parts.append(f"startup {row['startup'].get('spawn_to_serving_s', 0):.2f} s "
                     f"(replay {row['startup'].get('replay_s')} s)")
    if row.get("hello_to_delivered_receipts_s"):
        parts.append(f"HELLO->DELIVERED receipts {row['hello_to_delivered_receipts_s']:.3f} s")
    return parts


def _table_row(case: str, s: dict) -> str:
    """One case of the backlog table."""
    if s["failed"] == s["runs"]:
        return f"| {case} | FAILED: {first_line(s['errors'][0], 200)} |||||||||||"
    return (
        f"| {'SIGKILL + restart' if case == 'restart' else 'router kept running'} | "
        f"{fmt(s['fill.accepted_msg_s'])} | {fmt(s['startup.spawn_to_serving_s'], '.2f')}"
        f" | {fmt(s['startup.replay_s'], '.2f')} | {fmt(s['startup.records'])} / "
        f"{fmt(s['startup.pending'])} | {fmt(s['hello_to_first_s'], '.3f')} | "
        f"{fmt(s['hello_to_last_s'], '.3f')} | {fmt(s['hello_to_acked_s'], '.3f')} | "
        f"{fmt(s['hello_to_delivered_receipts_s'], '.3f')} | "
        f"{fmt(s['recovered_s'], '.2f')} | {fmt(s['received'])} / {fmt(s['duplicates'])}"
        f" / {fmt(s['out_of_order'])} | {runs_cell(s)} | {s['commits']} |")


def table(summary: dict, opts: DurabilityOptions) -> list[str]:
    """The resume table: the live case, then the restart."""
    keys = sorted((k for k in summary if k[0] == "backlog"), key=lambda k: k[1] != "live")
    if not keys:
        return []
    lines = [f"### Resume of a {opts.backlog:,}-message backlog (journal + fsync), "
             "ENDPOINT HELLO rider:1 cursor 0", "", *table_head(*COLUMNS)]
    return lines + [_table_row(k[1], summary[k]) for k in keys] + [""]


def trials(opts: DurabilityOptions, i: int) -> list[tuple[str, float]]:
    """The live case, and the restart unless --no-restart."""
    return [("live", 0.0)] + ([("restart", 0.0)] if opts.restart else [])


SCENARIO = Scenario(
    name="backlog",
    trials=trials,
    run=lambda label, rate, opts: trial_backlog(label == "restart", opts),
    line=line,
    table=table,
)
