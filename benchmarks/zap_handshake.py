"""What the ZAP handler costs a handshake, on its own: no router, no protocol.

``python -m benchmarks zap-handshake`` runs, in one process, a CURVE ROUTER asking a
:class:`router.auth.zap.ZapHandler` (credentials with ``--principals`` keys) and raw
DEALER clients in a second context (its own I/O thread, as another process would have)
over tcp loopback. A connection counts as authenticated when its first message reaches
the ROUTER (the message is queued until the handshake is done):

* one at a time: connect -> CURVE handshake -> ZAP -> first message, ``--sequential``
  times (median, p99), the same with no security alongside so CURVE + ZAP's own cost
  is the difference; the handler's mean time to answer one request;
* all at once: ``--connections`` DEALERs connect together; the time until every one's
  message has arrived (targets: < 5 ms per handshake, 1,000 connections in < 5 s).

``python -m benchmarks handshake`` measures the same through a real ``router serve``
(HELLO and WELCOME included).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import zmq

from benchmarks.harness.machine import environment
from benchmarks.harness.procs import free_port
from router.auth import credentials
from router.auth.zap import DOMAIN, ZapHandler

#: Targets of issue #12.
TARGET_ONE_MS = 5.0
TARGET_BURST_S = 5.0


class Bench:
    """One server (CURVE + ZAP, or no security) and a client context to connect from."""

    def __init__(self, secure: bool, principals: int, workdir: Path) -> None:
        self.server_ctx = zmq.Context()
        self.client_ctx = zmq.Context()
        self.client_ctx.set(zmq.MAX_SOCKETS, 4096)  # a context option: set(), not setsockopt()
        self.zap: ZapHandler | None = None
        self.opts: dict[int, bytes] = {}
        self.router = self.server_ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        if secure:
            self._secure(principals, workdir)
        self.url = f"tcp://127.0.0.1:{free_port()}"
        self.router.bind(self.url)

    def _secure(self, principals: int, workdir: Path) -> None:
        keys = [zmq.curve_keypair() for _ in range(principals)]
        text = "".join(f'[[principal]]\nname = "p{i}"\npublic_keys = ["{pub.decode()}"]\n'
                       'roles = ["sender"]\n' for i, (pub, _) in enumerate(keys))
        path = workdir / "credentials.toml"
        path.write_text(text)
        self.zap = ZapHandler(self.server_ctx, credentials.load(path)).start()
        server = zmq.curve_keypair()
        self.router.setsockopt(zmq.ZAP_DOMAIN, DOMAIN)
        self.router.setsockopt(zmq.CURVE_SERVER, 1)
        self.router.setsockopt(zmq.CURVE_PUBLICKEY, server[0])
        self.router.setsockopt(zmq.CURVE_SECRETKEY, server[1])
        client = keys[-1]  # the last principal: a lookup among all of them
        self.opts = {zmq.CURVE_SERVERKEY: server[0], zmq.CURVE_PUBLICKEY: client[0],
                     zmq.CURVE_SECRETKEY: client[1]}

    def dealer(self) -> zmq.Socket:
        """A client connected with the bench's options, its first message queued."""
        s = self.client_ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        for k, v in self.opts.items():
            s.setsockopt(k, v)
        s.connect(self.url)
        s.send(b"hi")
        return s

    def one_at_a_time(self, n: int) -> list[float]:
        """Seconds from connect to the first message at the ROUTER, one at a time."""
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            s = self.dealer()
            if not self.router.poll(5000):
                raise RuntimeError("a connection was not authenticated within 5 s")
            self.router.recv_multipart()
            out.append(time.perf_counter() - t0)
            s.close(linger=0)
        return out

    def all_at_once(self, n: int) -> float:
        """Seconds until ``n`` connections made together have all been authenticated."""
        t0 = time.perf_counter()
        socks = [self.dealer() for _ in range(n)]
        got, deadline = 0, time.monotonic() + 60
        while got < n and time.monotonic() < deadline:
            if self.router.poll(1000):
                self.router.recv_multipart()
                got += 1
        took = time.perf_counter() - t0
        for s in socks:
            s.close(linger=0)
        if got < n:
            raise RuntimeError(f"{n - got} of {n} connections not authenticated in 60 s")
        return took

    def close(self) -> None:
        """Stop the handler, close everything."""
        self.router.close(linger=0)
        if self.zap is not None:
            self.zap.stop()
        self.client_ctx.term()
        self.server_ctx.term()


def run_round(secure: bool, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    """One round of both measurements; seconds."""
    bench = Bench(secure, args.principals, workdir)
    try:
        seq = bench.one_at_a_time(args.sequential)
        burst = bench.all_at_once(args.connections)
        answer = bench.zap.mean_answer_s() if bench.zap else 0.0
    finally:
        bench.close()
    return {"p50": statistics.median(seq), "p99": sorted(seq)[int(len(seq) * 0.99) - 1],
            "burst": burst, "answer": answer}


def main(argv: list[str] | None = None) -> int:
    """Alternate rounds without security and with CURVE + ZAP; print a table."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks zap-handshake", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequential", type=int, default=500)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--principals", type=int, default=1000,
                    help="principals in the credentials (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians)")
    args = ap.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {"null": [], "curve": []}
    with tempfile.TemporaryDirectory(prefix="zap-handshake-") as work:
        for _ in range(args.rounds):
            for mode in results:
                results[mode].append(run_round(mode == "curve", args, Path(work)))
    report(results, args)
    curve = {k: statistics.median(r[k] for r in results["curve"]) for k in ("p50", "burst")}
    return 0 if curve["p50"] * 1e3 < TARGET_ONE_MS and curve["burst"] < TARGET_BURST_S else 1


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    """Print the environment, a table of medians and the verdict against the targets."""
    env = environment()
    print(f"### ZAP handshakes, {time.strftime('%Y-%m-%d %H:%M')}\n\nMachine: {env['cpu']}, "
          f"{env['cores']} cores, Linux {env['kernel']}; Python {env['python']}, pyzmq "
          f"{env['pyzmq']} (libzmq {env['libzmq']}); commit {env['commit']}.\n")
    print(f"Connect -> handshake -> first message at the ROUTER, tcp loopback, one process "
          f"(server and client contexts apart); {args.principals} principals; "
          f"{args.sequential} one at a time, then {args.connections} at once; medians of "
          f"{args.rounds} alternating rounds.\n")
    print(f"| security | one connection p50 ms | p99 ms | {args.connections} at once, s | "
          "ZAP answer, mean us |\n|---|---|---|---|---|")
    med = {mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
           for mode, rs in results.items()}
    for mode, m in med.items():
        answer = f"{m['answer'] * 1e6:.0f}" if mode == "curve" else "-"
        print(f"| {mode} | {m['p50'] * 1e3:.2f} | {m['p99'] * 1e3:.2f} | "
              f"{m['burst']:.2f} | {answer} |")
    c = med["curve"]
    print(f"\nCURVE + ZAP adds {(c['p50'] - med['null']['p50']) * 1e3:.2f} ms to a "
          f"connection (p50). Targets: one < {TARGET_ONE_MS:g} ms "
          f"({'met' if c['p50'] * 1e3 < TARGET_ONE_MS else 'NOT met'}), "
          f"{args.connections} < {TARGET_BURST_S:g} s "
          f"({'met' if c['burst'] < TARGET_BURST_S else 'NOT met'}).")


if __name__ == "__main__":
    sys.exit(main())
