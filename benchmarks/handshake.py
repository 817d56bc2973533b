"""What authentication costs a connection: CURVE + ZAP handshakes against a real router.

``python -m benchmarks handshake`` starts `router serve` with a credentials file and
measures, with raw DEALER sockets speaking the protocol (no SDK thread in the way):

* one at a time: connect -> HELLO -> WELCOME, ``--sequential`` times (median, p99), the
  same against an open router alongside, so the handshake's own cost is the difference;
* all at once: ``--connections`` DEALERs connect together; the time until every one has
  its WELCOME (targets: < 5 ms per handshake, 1,000 connections in < 5 s).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import zmq
import zmq.auth

from benchmarks.harness.machine import environment
from benchmarks.harness.procs import free_port
from router import protocol as P

CREDENTIALS = """[[principal]]
name = "bench"
public_keys = ["{key}"]
roles = ["sender"]
names = ["*"]
"""


def start_router(workdir: str, secure: bool) -> tuple[subprocess.Popen, str, dict]:
    """A router (CURVE with one principal, or open) and the client socket options."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "router", "serve", "--bind", url, "--data-dir",
           os.path.join(workdir, f"data-{port}"), "--journal", "false", "--history", "false"]
    opts: dict = {}
    if secure:
        certs = os.path.join(workdir, f"certs-{port}")
        os.makedirs(certs)
        server = zmq.auth.load_certificate(zmq.auth.create_certificates(certs, "router")[1])
        client = zmq.auth.load_certificate(zmq.auth.create_certificates(certs, "bench")[1])
        creds = os.path.join(workdir, "credentials.toml")
        with open(creds, "w") as f:
            f.write(CREDENTIALS.format(key=client[0].decode()))
        cmd += ["--credentials", creds, "--curve-secret-key",
                os.path.join(certs, "router.key_secret")]
        opts = {zmq.CURVE_SERVERKEY: server[0], zmq.CURVE_PUBLICKEY: client[0],
                zmq.CURVE_SECRETKEY: client[1]}
    log = open(os.path.join(workdir, f"router-{port}.log"), "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if b"router serving on" in open(log.name, "rb").read():
            return proc, url, opts
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"router did not start: {open(log.name).read()[-2000:]}")


def dealer(ctx: zmq.Context, url: str, opts: dict) -> zmq.Socket:
    """A DEALER with the security options, connected; it says HELLO at once (queued
    until the handshake completes)."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    for k, v in opts.items():
        s.setsockopt(k, v)
    s.connect(url)
    s.send(P.encode_hello(P.Role.SENDER, "bench"))
    return s


def one_at_a_time(ctx: zmq.Context, url: str, opts: dict, n: int) -> list[float]:
    """Seconds from connect to WELCOME, one connection at a time."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        s = dealer(ctx, url, opts)
        if not s.poll(5000):
            raise RuntimeError("no WELCOME within 5 s")
        s.recv_multipart()
        out.append(time.perf_counter() - t0)
        s.send(P.prefix(P.Command.BYE))
        s.close(linger=100)
    return out


def all_at_once(ctx: zmq.Context, url: str, opts: dict, n: int) -> float:
    """Seconds until ``n`` connections made together all have their WELCOME."""
    t0 = time.perf_counter()
    socks = [dealer(ctx, url, opts) for _ in range(n)]
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    waiting, deadline = set(socks), time.monotonic() + 60
    while waiting and time.monotonic() < deadline:
        for s, _ in poller.poll(1000):
            s.recv_multipart()
            if s in waiting:
                waiting.discard(s)
                poller.unregister(s)
    took = time.perf_counter() - t0
    for s in socks:
        s.close(linger=0)
    if waiting:
        raise RuntimeError(f"{len(waiting)} of {n} connections had no WELCOME in 60 s")
    return took


def main(argv: list[str] | None = None) -> int:
    """Run both measurements against a CURVE router and an open one; print a table."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks handshake", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequential", type=int, default=300)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians)")
    args = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="handshake-")
    ctx = zmq.Context()
    # Context.set, not setsockopt (which stores a default *socket* option): room for a
    # round's sockets while the previous round's are still being reaped
    ctx.set(zmq.MAX_SOCKETS, 2 * args.connections + args.sequential + 100)
    results: dict[str, dict[str, list[float]]] = {"curve": {}, "open": {}}
    try:
        for _ in range(args.rounds):
            for mode in ("open", "curve"):
                proc, url, opts = start_router(work, mode == "curve")
                try:
                    seq = one_at_a_time(ctx, url, opts, args.sequential)
                    burst = all_at_once(ctx, url, opts, args.connections)
                finally:
                    proc.terminate()
                    proc.wait(10)
                r = results[mode]
                r.setdefault("p50", []).append(statistics.median(seq))
                r.setdefault("p99", []).append(sorted(seq)[int(len(seq) * 0.99) - 1])
                r.setdefault("burst", []).append(burst)
    finally:
        ctx.term()
        shutil.rmtree(work, ignore_errors=True)
    env = environment()
    print(f"### Handshakes, {time.strftime('%Y-%m-%d %H:%M')}\n\nMachine: {env['cpu']}, "
          f"{env['cores']} cores, Linux {env['kernel']}; Python {env['python']}, pyzmq "
          f"{env['pyzmq']} (libzmq {env['libzmq']}); router commit {env['commit']}.\n")
    print(f"Connect -> HELLO -> WELCOME on tcp loopback, raw DEALERs; {args.sequential} "
          f"one at a time, then {args.connections} at once; medians of {args.rounds} "
          "alternating rounds.\n")
    print("| router | one connection p50 ms | p99 ms | "
          f"{args.connections} at once, s |\n|---|---|---|---|")
    for mode, r in results.items():
        print(f"| {mode} | {statistics.median(r['p50']) * 1e3:.2f} | "
              f"{statistics.median(r['p99']) * 1e3:.2f} | {statistics.median(r['burst']):.2f} |")
    extra = (statistics.median(results["curve"]["p50"])
             - statistics.median(results["open"]["p50"])) * 1e3
    print(f"\nCURVE + ZAP adds {extra:.2f} ms to a connection's first WELCOME (p50).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
