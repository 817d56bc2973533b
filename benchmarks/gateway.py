"""The gateway under many phones: memory per idle connection and end-to-end latency.

``python -m benchmarks gateway`` starts a router (journal on) and one `router gateway`,
then ``--procs`` app processes open ``--connections`` WebSockets in all (each a user
address, hello with a token). It measures the gateway's RSS before and after (KiB per
connection), then a sender pushes every user its rider's position every ``--period``
seconds (LOCATION) and an order update (ORDER, acked by the app) every ``--order-every``
positions, for ``--seconds``; the apps record end-to-end latency (router ACCEPTED to
received by the app: ``accepted_ms`` in the frame against the app's clock, same host).
Targets (issue 13): >= 10,000 idle connections at <= 20 KiB each; p99 < 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks.harness.machine import environment
from benchmarks.harness.procs import free_port

SECRET = "benchmark-token-secret-0123456789abcdef0123"

#: Attempts per app connection before the benchmark gives up on it (a refused or
#: timed-out connect is retried after 0.5 s, 1 s, ...; every retry is reported).
CONNECT_TRIES = 5


def raise_fd_limit(need: int) -> None:
    """Raise this process's open-file limit (the children inherit it) to the hard
    limit; fail with what to do when even that is below ``need``."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < need:
        raise SystemExit(f"the open-file limit is {hard}, the gateway needs {need} for "
                         f"these connections: raise it (ulimit -Hn) or use fewer")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def wait_log(path: str, needle: str, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while needle not in open(path).read():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{path}: {open(path).read()[-2000:]}")
        time.sleep(0.05)


async def _apps(url: str, tokens: list[str], ready: mp.Event, go: mp.Event,
                seconds: float, out: mp.Queue) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import WebSocketException
    lat: list[float] = []
    lat_by: dict[str, list[float]] = {"ORDER": [], "LOCATION": []}
    got = {"ORDER": 0, "LOCATION": 0}

    async def one(token: str) -> None:
        for attempt in range(CONNECT_TRIES):
            try:
                ws = await connect(url, compression=None, open_timeout=60, ping_interval=None)
                await ws.send(json.dumps({"type": "hello", "token": token}))
                welcome = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if welcome.get("type") != "welcome":
                    raise RuntimeError(f"no welcome: {welcome}")
                break
            except (OSError, asyncio.TimeoutError, RuntimeError, WebSocketException) as exc:
                # (WebSocketException: also a handshake the server timed out, which
                # websockets raises as InvalidMessage; it killed the task unnoticed.)
                errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.5 * (attempt + 1))
        else:
            failed.append(1)
            return
        counted.append(1)
        async with ws:
            while True:
                f = json.loads(await ws.recv())
                if f["type"] != "deliver":
                    continue
                ms = time.time() * 1000 - f["accepted_ms"]
                lat.append(ms)
                lat_by.setdefault(f["class"], []).append(ms)
                got[f["class"]] = got.get(f["class"], 0) + 1
                if f["seq"]:
                    await ws.send(json.dumps({"type": "ack", "seq": f["seq"]}))

    gc_max, gc_t0 = [0.0], [0.0]

    def gc_pause(phase: str, info: dict) -> None:  # how long the collector stops the loop
        if phase == "start":
            gc_t0[0] = time.perf_counter()
        else:
            gc_max[0] = max(gc_max[0], (time.perf_counter() - gc_t0[0]) * 1000)
    import gc
    gc.callbacks.append(gc_pause)
    counted: list[int] = []
    failed: list[int] = []
    errors: list[str] = []
    tasks = []
    for i, t in enumerate(tokens):
        tasks.append(asyncio.create_task(one(t)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)  # a city's phones do not all connect in one ms
    while len(counted) + len(failed) < len(tokens):
        await asyncio.sleep(0.1)
    if failed:
        out.put({"failed": len(failed), "errors": errors[:5], "retries": len(errors)})
        return
    # 2,500 phones in one process: their objects are long-lived, and a full collection
    # over all of them stopped this stand-in for ~170 ms (a phone holds one connection).
    gc.freeze()
    ready.set()
    while not go.is_set():
        await asyncio.sleep(0.05)
    lat.clear()
    for v in lat_by.values():
        v.clear()
    gc_max[0] = 0.0  # the load phase's pauses, not the connecting's
    await asyncio.sleep(seconds + 2)
    out.put({"lat": lat, "lat_by": lat_by, "got": got, "retries": len(errors), "gc_max_ms": gc_max[0]})
    for t in tasks:
        t.cancel()


def gateway_gc_pauses(glog: str) -> tuple[int, float]:
    """Full collections of the gateway that stopped it for 100 ms or more (it logs
    each), and the longest (ms)."""
    pauses = [float(line.split(" for ", 1)[1].split(" ms", 1)[0])
              for line in open(glog) if "full garbage collection stopped" in line]
    return len(pauses), max(pauses, default=0.0)


def gateway_quantiles(port: int) -> tuple[float, float]:
    """p50 and p99 (ms, as bucket upper bounds) of the gateway's own
    gateway_e2e_latency_seconds histogram, all classes together."""
    from urllib.request import urlopen
    text = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("gateway_e2e_latency_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0

    def at(q: float) -> float:
        for b in bounds:
            if total and buckets[b] >= q * total:
                return b * 1000
        return float("nan")
    return at(0.5), at(0.99)


def _failures(out: mp.Queue) -> str:
    """What app processes reported instead of becoming ready."""
    got = []
    while not out.empty():
        got.append(out.get_nowait())
    return str(got) if got else "no process reported a failure"


def app_process(url, tokens, ready, go, seconds, out) -> None:
    asyncio.run(_apps(url, tokens, ready, go, seconds, out))


def push(router: str, users: list[str], period: float, order_every: int,
         seconds: float, burst: int = 10) -> dict:
    """Positions to every user each period; an order update every order_every rounds.
    The round is spread over the period, ``burst`` positions back to back at a time."""
    from router.client import Sender
    from router.protocol import MsgClass
    sent = {"LOCATION": 0, "ORDER": 0}
    with Sender(router, "bench-city", max_pending=100_000) as s:
        end, rnd = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            t0 = time.monotonic()
            for i, u in enumerate(users):
                s.send(u, {"rider": f"rider:{i}", "x": rnd, "y": i},
                       msg_class=MsgClass.LOCATION, key=f"rider:{i}", kind="rider.location")
                if rnd % order_every == i % order_every:
                    s.send(u, {"state": "on the way", "n": rnd}, kind="order.status")
                    sent["ORDER"] += 1
                # spread the round over the period, as riders report independently
                if i % burst == burst - 1:
                    lag = t0 + period * (i + 1) / len(users) - time.monotonic()
                    if lag > 0:
                        time.sleep(lag)
            sent["LOCATION"] += len(users)
            rnd += 1
            left = t0 + period - time.monotonic()
            if left > 0:
                time.sleep(left)
        s.flush(30)
    return sent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks gateway", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--procs", type=int, default=4, help="app processes")
    ap.add_argument("--period", type=float, default=4.0, help="seconds between positions")
    ap.add_argument("--order-every", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--burst", type=int, default=10,
                    help="positions sent back to back before the sender paces itself "
                         "(riders report independently; until 2026-12-05 it was 100)")
    ap.add_argument("--ping-interval", type=float, default=20.0,
                    help="the gateway's --ping-interval (its keepalive; 0: off)")
    args = ap.parse_args(argv)
    raise_fd_limit(args.connections + 1000)
    from router.auth import tokens as tk
    from router.auth.credentials import TokenKey
    work = tempfile.mkdtemp(prefix="gw-bench-")
    procs: list[subprocess.Popen] = []
    try:
        creds = os.path.join(work, "credentials.toml")
        with open(creds, "w") as f:
            f.write(f'[tokens]\nkeys = [{{id = "b", secret = "{SECRET}"}}]\n')
        rport, gport = free_port(), free_port()
        router = f"tcp://127.0.0.1:{rport}"
        rlog, glog = os.path.join(work, "router.log"), os.path.join(work, "gateway.log")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "router", "serve", "--bind", router, "--data-dir",
             os.path.join(work, "data"), "--max-peers", "200000"],
            stdout=open(rlog, "w"), stderr=subprocess.STDOUT))
        wait_log(rlog, "router serving on", procs[0])
        mport = free_port()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "router", "gateway", "--router", router, "--listen",
             f"127.0.0.1:{gport}", "--credentials", creds, "--metrics-port", str(mport),
             "--ping-interval", str(args.ping_interval)],
            stdout=open(glog, "w"), stderr=subprocess.STDOUT))
        wait_log(glog, "gateway serving apps", procs[1])
        gw_pid = procs[1].pid
        rss0 = rss_kib(gw_pid)
        key = [TokenKey("b", SECRET.encode())]
        users = [f"user:{i}" for i in range(args.connections)]
        toks = [tk.issue(u, 3600, key, "order-router") for u in users]
        ready = [mp.Event() for _ in range(args.procs)]
        go, out = mp.Event(), mp.Queue()
        url = f"ws://127.0.0.1:{gport}/ws"
        # the phones count until the sender's last round, begun before --seconds and
        # spread over a whole period, has arrived
        counting = args.seconds + args.period
        apps = [mp.Process(target=app_process, args=(url, toks[i::args.procs], ready[i], go,
                                                      counting, out))
                for i in range(args.procs)]
        t0 = time.monotonic()
        for p in apps:
            p.start()
        for e in ready:
            if not e.wait(300):
                raise RuntimeError("the apps did not all connect within 300 s: "
                                   + _failures(out))
        connect_s = time.monotonic() - t0
        time.sleep(2)
        rss1 = rss_kib(gw_pid)
        go.set()
        sent = push(router, users, args.period, args.order_every, args.seconds, args.burst)
        results = [out.get(timeout=120) for _ in apps]
        gw_q = gateway_quantiles(mport)
        if any("failed" in r for r in results):
            raise RuntimeError(f"app connections failed: {results}")
        rss2 = rss_kib(gw_pid)
        for p in apps:
            p.join(10)
            if p.is_alive():
                p.kill()
        lat = sorted(x for r in results for x in r["lat"])
        got = {k: sum(r["got"].get(k, 0) for r in results) for k in ("ORDER", "LOCATION")}
        q = lambda p: lat[min(int(len(lat) * p), len(lat) - 1)] if lat else float("nan")  # noqa: E731
        env = environment()
        print(f"### Gateway, {args.connections:,} WebSocket connections, "
              f"{time.strftime('%Y-%m-%d %H:%M')}\n")
        print(f"Machine: {env['cpu']}, {env['cores']} cores, Linux {env['kernel']}; Python "
              f"{env['python']}, pyzmq {env['pyzmq']} (libzmq {env['libzmq']}); commit "
              f"{env['commit']}. Router (journal + fsync) and one gateway process; "
              f"{args.procs} app processes (Python websockets clients) on the same 2 cores; "
              f"the sender paces every {args.burst} positions.\n")
        print("| figure | value |\n|---|---|")
        print(f"| connections open (hello + welcome) | {args.connections:,} in {connect_s:.1f} s "
              f"({sum(r.get('retries', 0) for r in results)} connects retried) |")
        print(f"| gateway RSS before / idle with all / after load | {rss0 // 1024} / "
              f"{rss1 // 1024} / {rss2 // 1024} MiB |")
        print(f"| per idle connection | {(rss1 - rss0) / args.connections:.1f} KiB |")
        print(f"| offered LOCATION / ORDER in {args.seconds:.0f} s | {sent['LOCATION']:,} / "
              f"{sent['ORDER']:,} |")
        print(f"| received LOCATION (conflated) / ORDER | {got['LOCATION']:,} / "
              f"{got['ORDER']:,} |")
        print(f"| e2e latency p50 / p99 / max (all classes) | {q(0.5):.1f} / {q(0.99):.1f} / "
              f"{(lat[-1] if lat else float('nan')):.1f} ms |")
        for cls in ("ORDER", "LOCATION"):  # ORDER waits for the journal's fsync too
            v = sorted(x for r in results for x in r["lat_by"].get(cls, []))
            if v:
                print(f"| e2e {cls} p50 / p99 | {v[len(v) // 2]:.1f} / "
                      f"{v[min(int(len(v) * 0.99), len(v) - 1)]:.1f} ms |")
        print(f"| the gateway's own view, ACCEPTED -> written to the app, p50 / p99 (bucket "
              f"bounds) | {gw_q[0]:g} / {gw_q[1]:g} ms |")
        pauses = [r.get("gc_max_ms", 0.0) for r in results]
        print(f"| app processes: longest GC pause under load | {max(pauses):.0f} ms |")
        n_gc, gc_ms = gateway_gc_pauses(glog)
        print(f"| gateway: full collections of 100 ms or more (whole run), longest | {n_gc}, "
              f"{gc_ms:.0f} ms |")
        return 0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
