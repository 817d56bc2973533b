"""What CURVE costs libzmq per frame and per byte: a bare ``zmq.proxy``, no protocol.

``python -m benchmarks curve-frames`` sends the same messages through a bare
``zmq.proxy`` (benchmarks/hop/proxy.py) in plaintext and under CURVE, with native
drivers (loadgen's ``send_frames`` and ``count_messages``), for three shapes:

* ``2x``: two frames of 30 + 200 bytes, the router's SEND and DELIVER today;
* ``1x``: one frame of 230 bytes, the same bytes in one frame;
* ``10in1``: one frame of 2,300 bytes, ten such messages packed in one frame.

Contenders are interleaved, ``--repeat`` rounds, medians reported, with CURVE /
plaintext per shape: what the wire layout can and cannot buy the CURVE hop (issue 12).
Throughput counts the 230-byte messages a frame carries (``10in1``: ten per frame).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import zmq
import zmq.auth

from benchmarks import ROOT
from benchmarks.drivers.build import ensure_built
from benchmarks.harness.machine import environment
from benchmarks.harness.procs import TrialError, free_port, spawn, stop, tail

#: shape -> (frame sizes of one wire message, 230-byte messages it carries)
SHAPES = {"2x": ((30, 200), 1), "1x": ((230,), 1), "10in1": ((2300,), 10)}


def _driver(role: str, endpoint: str, server_key: str, sizes: str, count: int) -> int:
    """One end, run as ``python -m benchmarks.curve_frames --role ...``: prints JSON."""
    from benchmarks.drivers.build import import_loadgen
    loadgen = import_loadgen()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = -1 if role == "send" else 0   # the sender's last frames must leave
    sock.rcvhwm = sock.sndhwm = 1000
    if server_key:
        public, secret = zmq.curve_keypair()
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
            server_key.encode(), public, secret)
    sock.connect(endpoint)
    if role == "send":
        t0, t1 = loadgen.send_frames(sock, [int(x) for x in sizes.split(",")], count)
        out = {"sent_ns": t1 - t0}
    else:
        print(json.dumps({"ready": True}), flush=True)
        got, first, last = loadgen.count_messages(sock, 120.0)
        out = {"messages": got, "seconds": (last - first) / 1e9}
    sock.close()
    ctx.term()
    print(json.dumps(out), flush=True)
    return 0


def trial(workdir: str, shape: str, curve: bool, count: int, keys: tuple[str, str]) -> float:
    """One proxy, one receiver, one sender; 230-byte messages per second received."""
    sizes, per_frame = SHAPES[shape]
    front, back = free_port(), free_port()
    tag = f"{shape}-{'curve' if curve else 'plain'}"
    cmd = [sys.executable, "-m", "benchmarks.hop.proxy",
           "--frontend", f"tcp://127.0.0.1:{front}", "--backend", f"tcp://127.0.0.1:{back}"]
    if curve:
        cmd += ["--curve-secret-key", keys[1]]
    proxy = spawn(cmd, os.path.join(workdir, f"proxy-{tag}.log"), cwd=ROOT,
                  stdout=subprocess.PIPE, text=True)
    ends = []
    try:
        if proxy.stdout.readline().strip() != "READY":
            raise TrialError("proxy did not start: "
                             + tail(os.path.join(workdir, f"proxy-{tag}.log")))
        for role, port in (("recv", back), ("send", front)):
            ends.append(spawn(
                [sys.executable, "-m", "benchmarks.curve_frames", "--role", role,
                 "--endpoint", f"tcp://127.0.0.1:{port}",
                 "--server-key", keys[0] if curve else "",
                 "--sizes", ",".join(map(str, sizes)), "-n", str(count)],
                os.path.join(workdir, f"{role}-{tag}.log"), cwd=ROOT,
                stdout=subprocess.PIPE, text=True))
            if role == "recv":
                ends[0].stdout.readline()   # connected: the sender may start
        out, _ = ends[0].communicate(timeout=180)
        if ends[0].returncode != 0:
            raise TrialError(f"{tag} receiver failed: "
                             + tail(os.path.join(workdir, f"recv-{tag}.log")))
        result = json.loads(out.strip().splitlines()[-1])
    finally:
        for proc in (*ends, proxy):
            stop(proc, grace=1.0)
    if result["messages"] != count:
        raise TrialError(f"{tag}: received {result['messages']} of {count}")
    return count * per_frame / result["seconds"]


def run(args: argparse.Namespace) -> dict[tuple[str, bool], list[float]]:
    """``--repeat`` rounds of every shape, plaintext and CURVE, interleaved."""
    ensure_built()
    rates: dict[tuple[str, bool], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="curve-frames-") as workdir:
        public, secret = zmq.auth.create_certificates(workdir, "server")
        server_public = zmq.auth.load_certificate(public)[0].decode()
        for r in range(args.repeat):
            for shape in args.shapes:
                for curve in (False, True):
                    rate = trial(workdir, shape, curve, args.count // SHAPES[shape][1],
                                 (server_public, secret))
                    rates.setdefault((shape, curve), []).append(rate)
                    print(f"round {r + 1}: {shape:6} {'curve' if curve else 'plain'} "
                          f"{rate:12,.0f} msg/s", file=sys.stderr, flush=True)
    return rates


def report(rates: dict[tuple[str, bool], list[float]], count: int) -> str:
    """Markdown: medians per shape, CURVE / plaintext, the runs, the machine."""
    lines = [f"`python -m benchmarks curve-frames` ({count:,} messages of 230 B per trial, "
             "bare `zmq.proxy`, native sender and receiver)", "",
             "| shape | plaintext msg/s | CURVE msg/s | CURVE / plaintext | runs (plain; curve) |",
             "|---|---|---|---|---|"]
    for shape in dict.fromkeys(s for s, _ in rates):
        plain, curve = rates[(shape, False)], rates[(shape, True)]
        mp, mc = statistics.median(plain), statistics.median(curve)
        runs = (", ".join(f"{x:,.0f}" for x in plain) + "; "
                + ", ".join(f"{x:,.0f}" for x in curve))
        lines.append(f"| {shape} | {mp:,.0f} | {mc:,.0f} | {mc / mp:.2f} | {runs} |")
    env = environment()
    lines += ["", f"Machine: {env['cpu']}, {env['cores']} cores, Linux {env['kernel']}; "
              f"Python {env['python']}, pyzmq {env['pyzmq']}, libzmq {env['libzmq']}; "
              f"commit {env['commit']}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks curve-frames",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=100_000,
                        help="230-byte messages per trial (default 100,000)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--shapes", type=lambda s: s.split(","), default=list(SHAPES),
                        help=f"comma-separated, of {', '.join(SHAPES)} (default: all)")
    parser.add_argument("--role", choices=("send", "recv"), help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--server-key", default="", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        return _driver(args.role, args.endpoint, args.server_key, args.sizes, args.count)
    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape {', '.join(unknown)}: choose from {', '.join(SHAPES)}")
    if args.count < 10 or args.repeat < 1:
        parser.error("--count must be at least 10 and --repeat at least 1")
    print(report(run(args), args.count))
    return 0


if __name__ == "__main__":
    sys.exit(main())
