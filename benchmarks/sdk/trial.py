"""One trial of the users' benchmark: a server, one receiver process, one publisher
process (benchmarks/drivers/users.py), measured, stopped."""

from __future__ import annotations

import array
import shutil
import tempfile
import time

from benchmarks.harness.driver_protocol import Driver
from benchmarks.harness.machine import busy_noise, system_busy_s
from benchmarks.harness.procs import TrialError
from benchmarks.harness.stats import percentiles, read_array
from benchmarks.sdk import curve
from benchmarks.sdk.options import SdkOptions
from benchmarks.sdk.servers import CONTENDERS, Server

DRIVER = "benchmarks.drivers.users"


def configs(contender: str, server: Server, opts: SdkOptions, rate: float,
            tmp: str) -> tuple[dict, dict]:
    """(publisher config, receiver config) of one trial; for a router with credentials,
    also its key pairs and credentials file in ``tmp`` (the server reads them at start)."""
    count = max(1, int(rate * opts.duration)) if rate else opts.count
    base = {"system": contender, "endpoint": server.endpoint, "count": count,
            "payload": opts.payload, "window": opts.window, "idle": opts.idle,
            "deadline": opts.deadline, "connect_timeout": 30, "go_timeout": 120,
            "tag": f"users{int(time.time() * 1000) % 10**9}"}
    pkeys, rkeys = curve.secure(tmp, base["tag"]) if server.kind == "router-curve" \
        else ({}, {})
    return dict(base, rate=rate, **pkeys), dict(base, lat_file=f"{tmp}/lat.bin", **rkeys)


def run_trial(contender: str, opts: SdkOptions, rate: float = 0.0) -> dict:
    """Start the server, the receiver and the publisher; return one result row."""
    tmp = tempfile.mkdtemp(prefix=f"users-{contender}-", dir=opts.workdir)
    server = Server(CONTENDERS[contender][0], tmp)
    drivers: list[Driver] = []
    row = {"contender": contender, "rate": rate}
    try:
        pcfg, rcfg = configs(contender, server, opts, rate, tmp)
        server.start()
        row["count"] = pcfg["count"]
        receiver = Driver(DRIVER, "receiver", rcfg, tmp, "receiver")
        drivers.append(receiver)
        receiver.wait("ready", 60)
        publisher = Driver(DRIVER, "publisher", pcfg, tmp, "publisher")
        drivers.append(publisher)
        publisher.wait("ready", 60)
        server.check_alive()
        busy0, t_go, cpu0 = system_busy_s(), time.monotonic(), server.cpu_s()
        receiver.go()
        publisher.go()
        wait_s = opts.deadline + (opts.duration if rate else 0)
        publisher.wait("sent", wait_s)
        receiver.send("done")
        rres = receiver.wait("result", wait_s)
        server_cpu = server.cpu_s() - cpu0
        publisher.send("close")
        pres = publisher.wait("result", 30)
        server.check_alive()
        ours = server_cpu + (pres.get("cpu_s") or 0) + (rres.get("cpu_s") or 0)
        row.update(figures(pres, rres, server_cpu, rcfg["lat_file"]))
        row.update(busy_noise(busy0, t_go, ours))
        row["publisher_result"] = {k: v for k, v in pres.items() if k != "event"}
        row["receiver_result"] = {k: v for k, v in rres.items() if k != "event"}
    except TrialError as exc:
        row["error"] = str(exc)
    finally:
        for d in drivers:
            d.close()
        server.stop()
        if opts.keep:
            row["workdir"] = tmp
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return row


def figures(pres: dict, rres: dict, server_cpu: float, lat_file: str) -> dict:
    """A trial's figures from the publisher's and the receiver's results."""
    sent, got = pres["sent"], rres["received"]
    t0 = pres["t_first_ns"]
    span = max(1, (rres["t_last_ns"] or t0) - t0) / 1e9
    out = {
        "sent": sent, "delivered": got, "lost": sent - got,
        "msg_s": got / span if got else 0.0,
        "offered_s": sent / (max(1, pres["t_last_ns"] - t0) / 1e9),
        "sender_cpu_us": pres["cpu_s"] * 1e6 / sent if sent else None,
        "receiver_cpu_us": rres["cpu_s"] * 1e6 / got if got else None,
        "server_cpu_us": server_cpu * 1e6 / got if got else None,
    }
    receipts = pres.get("receipts") or {}
    if receipts.get("DELIVERED"):  # sdk-reliable: DELIVERED receipts per second
        out["confirmed_msg_s"] = receipts["DELIVERED"] / (max(1, pres["t_confirmed_ns"] - t0)
                                                          / 1e9)
    if pres.get("acked"):  # JetStream: PubAcks per second
        out["confirmed_msg_s"] = pres["acked"] / (max(1, pres["t_acked_ns"] - t0) / 1e9)
    lat = array.array("q")
    lat.extend(read_array(lat_file, "q"))
    out.update(percentiles(lat, unit="us", count_key="samples"))
    return out
