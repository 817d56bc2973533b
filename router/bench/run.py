"""The parent: start the client processes, watch them, report; the command's entry."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import sys
import time

from .plan import BenchError, MIN_SIZE, Plan, STOP_GRACE
from .control import Control
from .process import _child
from .report import summarize, table

class Run:
    """A `router bench` run: client processes, progress, results."""

    def __init__(self, plan: Plan, progress=sys.stderr) -> None:
        self.plan = plan
        self.progress = progress
        self.mp = mp.get_context("spawn")
        self.n_pub = 0 if plan.mode == "sub" else plan.publishers
        self.n_recv = plan.receivers
        self.ctl = Control(self.mp, self.n_recv + self.n_pub)
        self.procs: list = []

    def _start(self, kind: str, index: int, slot: int) -> None:
        p = self.mp.Process(target=_child, args=(self.plan, kind, index, self.ctl, slot),
                            name=f"bench-{kind}-{index}", daemon=True)
        p.start()
        self.procs.append(p)

    def _next(self, timeout: float) -> dict | None:
        try:
            msg = self.ctl.results.get(timeout=timeout)
        except queue.Empty:
            dead = [p for p in self.procs if p.exitcode not in (None, 0)]
            if dead:
                raise BenchError(f"{dead[0].name} exited with code {dead[0].exitcode}")
            return None
        if msg["role"] == "error":
            raise BenchError(msg["error"])
        return msg

    def _wait_ready(self, n: int) -> None:
        deadline = time.monotonic() + self.plan.timeout + 30  # spawn imports included
        ready = 0
        while ready < n:
            if time.monotonic() > deadline:
                raise BenchError(f"only {ready} of {n} clients connected within "
                                 f"{self.plan.timeout + 30:.0f} s")
            msg = self._next(0.2)
            if msg and msg["role"] == "ready":
                ready += 1

    def run(self) -> dict:
        """Start the clients, watch them to the end, and return the summary."""
        plan = self.plan
        try:
            for r in range(self.n_recv):
                self._start("receiver", r, r)
            for p in range(self.n_pub):
                self._start("publisher", p, self.n_recv + p)
            self._wait_ready(self.n_recv + self.n_pub)
            self.ctl.t0.value = time.monotonic_ns()
            self.ctl.go_event.set()
            pubs, recvs, interrupted = self._watch()
            summary = summarize(plan, pubs, recvs)
            summary["interrupted"] = interrupted
            return summary
        finally:
            self.ctl.stop_event.set()
            self.ctl.release.set()
            for p in self.procs:
                p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join(5)

    def _watch(self) -> tuple[list[dict], list[dict], bool]:
        """Collect every client's figures, printing progress; a first Ctrl-C stops the
        clients and still collects what they measured (a second one quits)."""
        ctl = self.ctl
        pubs: list[dict] = []
        recvs: list[dict] = []
        t0 = time.monotonic()
        last_print, last_counts = t0, (0, 0)
        interrupted_at = None
        while len(recvs) < self.n_recv or len(pubs) < self.n_pub:
            try:
                msg = self._next(0.1)
                if msg and msg["role"] == "publisher":
                    pubs.append(msg)
                    if len(pubs) == self.n_pub:
                        self._set_expected(pubs)
                elif msg and msg["role"] == "receiver":
                    recvs.append(msg)
                now = time.monotonic()
                if interrupted_at is None and now - last_print >= 1.0:
                    last_counts = self._print_progress(now - t0, now - last_print,
                                                       last_counts)
                    last_print = now
                if interrupted_at is not None and now - interrupted_at > STOP_GRACE:
                    silent = self.n_pub + self.n_recv - len(pubs) - len(recvs)
                    raise BenchError(f"interrupted, and {silent} clients did not report "
                                     f"within {STOP_GRACE:.0f} s")
            except KeyboardInterrupt:
                if interrupted_at is not None:
                    raise
                interrupted_at = time.monotonic()
                ctl.stop_event.set()
                print("interrupted: stopping the clients, figures so far follow "
                      "(Ctrl-C again to quit now)", file=self.progress, flush=True)
        ctl.release.set()
        return (sorted(pubs, key=lambda m: m["slot"]), sorted(recvs, key=lambda m: m["slot"]),
                interrupted_at is not None)

    def _set_expected(self, pubs: list[dict]) -> None:
        for r in range(self.n_recv):
            self.ctl.expected[r] = sum(p["per_target"][r] for p in pubs if p["per_target"])
        self.ctl.done.set()

    def _print_progress(self, elapsed: float, dt: float, last: tuple[int, int]) -> tuple:
        sent = sum(self.ctl.counts[self.n_recv + i] for i in range(self.n_pub))
        got = sum(self.ctl.counts[i] for i in range(self.n_recv))
        label = "served" if self.plan.mode == "request" else "delivered"
        print(f"[{elapsed:5.1f}s] sent {sent:,} ({(sent - last[0]) / dt:,.0f}/s)  "
              f"{label} {got:,} ({(got - last[1]) / dt:,.0f}/s)",
              file=self.progress, flush=True)
        return sent, got


def check_plan(plan: Plan, max_payload: int | None = None) -> None:
    """Raise ValueError (one line) for a plan that cannot run."""
    if plan.size < MIN_SIZE:
        raise ValueError(f"--size must be at least {MIN_SIZE} bytes (the send time and "
                         f"index travel in the payload), got {plan.size}")
    if max_payload is not None and plan.size > max_payload:
        raise ValueError(f"--size {plan.size} is above the router's max payload "
                         f"({max_payload} B)")
    if plan.mode in ("pub", "reliable") and plan.receivers == 0 and plan.publishers == 0:
        raise ValueError("nothing to run: --publishers and --receivers are both 0")
    if plan.mode == "request" and plan.receivers == 0:
        raise ValueError("request mode needs --receivers 1 or more (the service workers)")
    if plan.mode in ("pub", "reliable") and plan.receivers == 0 and not plan.tag:
        raise ValueError("--receivers 0 sends to bench:<tag>.0 for a `router bench sub` "
                         "run elsewhere: give both the same --tag")
    if plan.mode != "sub" and plan.publishers < 1:
        raise ValueError(f"{plan.mode} mode needs --publishers 1 or more")
    if plan.mode == "sub" and plan.receivers < 1:
        raise ValueError("sub mode needs --receivers 1 or more")
    if plan.mode == "sub" and not plan.tag:
        raise ValueError("sub mode needs --tag, the same as the publishing run's")


def probe(url: str, timeout: float, keys: dict | None = None) -> int:
    """Connect once (fail fast, one line, when no router answers or refuses ``keys``,
    the CURVE options); the router's max payload."""
    from ..client import Sender

    with Sender(url, "bench-probe", timeout=timeout, **(keys or {})) as s:
        return s.welcome.max_payload


def main(plan: Plan, as_json: bool = False) -> int:
    """Run ``plan``, print the progress to stderr and the table (or JSON) to stdout."""
    import orjson

    if not plan.tag:
        plan.tag = os.urandom(4).hex()
    check_plan(plan, probe(plan.url, plan.timeout, plan.keys()))
    summary = Run(plan).run()
    if as_json:
        print(orjson.dumps(summary).decode())
    else:
        print(table(summary))
    if summary["interrupted"]:
        return 130
    confirmed = {"reliable": summary.get("receipts", {}).get("DELIVERED", 0),
                 "request": summary["delivered"]}.get(plan.mode)
    if confirmed is not None and confirmed < summary["sent"]:
        print(f"router bench: {summary['sent'] - confirmed:,} of {summary['sent']:,} "
              "messages were not confirmed", file=sys.stderr)
        return 1
    return 0
