"""The lunch peak of a large city, on this one box (issue 13's city-scale benchmark).

    python -m benchmarks city                     # 100,000 addresses, 1,500 orders/s, 30 s
    python -m benchmarks city --orders 300 --seconds 10 --users 5000 --riders 4000 \\
        --merchants 1000                          # a quick look

One ``router serve`` (journal and fsync on) and four kinds of process, each a real
client of the SDK's native engine over tcp loopback:

* ``--hubs`` phone hubs stand in for the gateways (GATEWAY role): between them they bind
  every user, rider and merchant address (100,000 by default), ack every reliable
  delivery and answer the way the parties' apps do: a merchant confirms each new order
  and writes the user a chat line, the user answers it, a rider accepts an offer (90%),
  rejects it (8%) or lets it time out (2%).
* the order service binds ``svc:orders`` and ``svc:dispatch``: ``--orders`` new orders a
  second, each created at its merchant; on the confirm, accepted to the user and a
  DISPATCH offer to a rider (TTL 15 s); a reject or 3 s without an answer offers the order
  to the next rider; on accept, assigned, then picked up and delivered (to the user and
  the merchant) a few seconds later.
* the rider positions: ``--locations`` LOCATION messages a second (25,000), each a
  rider's position to its user, conflated per recipient by rider.

Every message carries its send time; receivers take end to end latency per class
(sender's send -> the receiving client's application has it, same host clock). At the end
every reliable message sent must have been received exactly once (the receivers' count of
reliable deliveries equals the senders' count of reliable sends, and every sender holds a
DELIVERED receipt for each), or the run fails. Each process reports its CPU and memory.
Where this box is the limit, the report says so: five processes share two cores.
"""

from __future__ import annotations

import argparse
import heapq
import multiprocessing as mp
import os
import random
import resource
import struct
import subprocess
import sys
import tempfile
import time

from benchmarks.harness.machine import environment
from benchmarks.harness.procs import free_port

#: Payload head: send time (wall clock us), order id, step, user, merchant, rider.
HEAD = struct.Struct("<qqBiii")
SIZE = 200  #: payload bytes (a JSON order update is about this size)

# Steps of an order, carried in the payload.
CREATED, CONFIRM, ACCEPTED, OFFER, ACCEPT, REJECT, ASSIGNED, PICKED_UP, DELIVERED, \
    CHAT_M, CHAT_U, POSITION = range(12)

OFFER_TIMEOUT_S = 3.0
PICKUP_S, DROP_S = 2.0, 4.0  # after the rider accepts (compressed time)
WARMUP_S = 5.0  # latencies before this are not counted
#: After the load: orders under way finish (an offer may time out thrice, then the drop).
FINISH_S = OFFER_TIMEOUT_S * 3 + DROP_S + 2.0
CLASSES = ("ORDER", "DISPATCH", "CHAT", "LOCATION")


def now_us() -> int:
    return time.time_ns() // 1000


def pack(step: int, order: int, user: int, merchant: int, rider: int) -> bytes:
    """One payload: the head, padded to SIZE bytes."""
    head = HEAD.pack(now_us(), order, step, user, merchant, rider)
    return head + bytes(SIZE - len(head))


class Tally:
    """What one process saw: latencies per class after warm-up, reliable counts, receipts."""

    def __init__(self) -> None:
        self.t_measure = self.t_end = 0.0  # latencies count between these (wall clock)
        self.lat: dict[str, list[int]] = {c: [] for c in CLASSES}
        self.reliable_in = self.reliable_out = self.delivered = self.failed = 0
        self.extra: dict[str, int] = {}

    def on_receipt(self, r) -> None:
        from router.protocol import Status
        if r.status == Status.DELIVERED:
            self.delivered += 1
        elif r.status in (Status.EXPIRED, Status.REFUSED, Status.FAILED):
            self.failed += 1

    def took(self, d) -> tuple:
        """Record delivery ``d``; return its payload head."""
        head = HEAD.unpack_from(d.payload)
        if d.seq:
            self.reliable_in += 1
        if self.t_measure <= time.time() < self.t_end:
            self.lat[d.msg_class.name].append(now_us() - head[0])
        return head

    def start(self, t_go: float, seconds: float) -> None:
        """The load started at ``t_go`` and lasts ``seconds``: count after warm-up."""
        self.t_measure, self.t_end = t_go + WARMUP_S, t_go + seconds

    def count(self, what: str, n: int = 1) -> None:
        self.extra[what] = self.extra.get(what, 0) + n

    def result(self, role: str, cpu0: float, client) -> dict:
        return {"role": role, "lat": self.lat, "reliable_in": self.reliable_in,
                "reliable_out": self.reliable_out, "delivered": self.delivered,
                "failed": self.failed, "extra": self.extra,
                "cpu_s": time.process_time() - cpu0,
                "rss_mib": rss_mib(os.getpid()),
                "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "duplicates": getattr(client, "duplicates", 0)}


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def settle(client, tally: Tally, stop_at: float, quiet_s: float = 2.0) -> None:
    """After the load: keep taking deliveries and receipts until every reliable message
    this client sent has its final receipt and nothing came for ``quiet_s``, or until
    ``stop_at``."""
    last = time.monotonic()
    while time.monotonic() < stop_at:
        batch = client.recv_many(2000, 0.05) if hasattr(client, "recv_many") else []
        for d in batch:
            tally.took(d)
            client.ack(d)
        client.poll(0)
        if batch:
            last = time.monotonic()
        done = tally.delivered + tally.failed >= tally.reliable_out
        if done and time.monotonic() - last >= quiet_s:
            return


# ---------------------------------------------------------------------------- processes

def hub(url: str, index: int, args: argparse.Namespace, ready, go, out) -> None:
    """The phones of this hub's share of users, riders and merchants (every ``hubs``-th)."""
    from router.client import Endpoint
    from router.protocol import MsgClass, Role

    h = args.hubs
    addrs = ([f"user:{i}" for i in range(index, args.users, h)]
             + [f"rider:{i}" for i in range(index, args.riders, h)]
             + [f"merchant:{i}" for i in range(index, args.merchants, h)])
    rng = random.Random(index)
    tally = Tally()
    ep = Endpoint(url, addrs, name=f"city-hub-{index}", role=Role.GATEWAY, timeout=120,
                  on_receipt=tally.on_receipt)
    ready.set()
    t_go = go.get()
    tally.start(t_go, args.seconds)
    cpu0, end = time.process_time(), t_go + args.seconds + FINISH_S
    while time.time() < end:
        for d in ep.recv_many(2000, 0.05):
            _, order, step, u, m, r = tally.took(d)
            ep.ack(d)
            if step == CREATED:  # the merchant confirms, and tells the user
                ep.send("svc:orders", pack(CONFIRM, order, u, m, r), kind="order.confirm",
                        order=order)
                ep.send(f"user:{u}", pack(CHAT_M, order, u, m, r), kind="chat",
                        msg_class=MsgClass.CHAT, order=order)
                tally.reliable_out += 2
            elif step == CHAT_M:  # the user answers
                ep.send(f"merchant:{m}", pack(CHAT_U, order, u, m, r), kind="chat",
                        msg_class=MsgClass.CHAT, order=order)
                tally.reliable_out += 1
            elif step == OFFER:
                x = rng.random()
                if x < 0.02:
                    tally.count("offers ignored")
                    continue
                answer = ACCEPT if x < 0.92 else REJECT
                ep.send("svc:dispatch", pack(answer, order, u, m, r), kind="dispatch.answer",
                        msg_class=MsgClass.DISPATCH, order=order)
                tally.reliable_out += 1
        ep.poll(0)
    settle(ep, tally, time.monotonic() + args.settle)
    out.put(tally.result(f"hub {index}", cpu0, ep))
    ep.close()


class Orders:
    """The order service's state: timers and each order's offer."""

    def __init__(self, ep, args: argparse.Namespace, tally: Tally) -> None:
        self.ep, self.args, self.tally = ep, args, tally
        self.timers: list[tuple[float, int, int, int]] = []  # (when, order, step, attempt)
        self.offer_no: dict[int, int] = {}  # order -> offers made (the live one's number)
        self.parties: dict[int, tuple[int, int, int]] = {}
        self.next_id = 1

    def send(self, to: str, step: int, order: int, cls, kind: str, ttl_ms: int = 0) -> None:
        from router.protocol import MsgClass
        u, m, r = self.parties[order]
        self.ep.send(to, pack(step, order, u, m, r), kind=kind, msg_class=cls, order=order,
                     ttl_ms=ttl_ms)
        if cls != MsgClass.LOCATION:
            self.tally.reliable_out += 1

    def create(self) -> None:
        from router.protocol import MsgClass
        k = self.next_id
        self.next_id += 1
        a = self.args
        self.parties[k] = (k % a.users, k % a.merchants, (k * 7) % a.riders)
        self.send(f"merchant:{k % a.merchants}", CREATED, k, MsgClass.ORDER, "order.created")

    def offer(self, order: int) -> None:
        from router.protocol import MsgClass
        n = self.offer_no.get(order, 0) + 1
        self.offer_no[order] = n
        u, m, r = self.parties[order]
        if n > 1:  # reassignment: the next rider
            r = (r + 7919) % self.args.riders
            self.parties[order] = (u, m, r)
            self.tally.count("reassignments")
        self.send(f"rider:{r}", OFFER, order, MsgClass.DISPATCH, "dispatch.offer", 15_000)
        heapq.heappush(self.timers, (time.monotonic() + OFFER_TIMEOUT_S, order, OFFER, n))

    def on(self, step: int, order: int, rider: int) -> None:
        """A merchant's confirm, or a rider's answer (only the live offer's rider counts)."""
        from router.protocol import MsgClass
        if order not in self.parties:
            return
        u, m, r = self.parties[order]
        if step in (ACCEPT, REJECT) and rider != r:
            return
        if step == CONFIRM:
            self.send(f"user:{u}", ACCEPTED, order, MsgClass.ORDER, "order.accepted")
            self.offer(order)
        elif step == ACCEPT and self.offer_no.pop(order, None) is not None:
            self.send(f"user:{u}", ASSIGNED, order, MsgClass.ORDER, "order.assigned")
            t = time.monotonic()
            heapq.heappush(self.timers, (t + PICKUP_S, order, PICKED_UP, 0))
            heapq.heappush(self.timers, (t + DROP_S, order, DELIVERED, 0))
        elif step == REJECT and order in self.offer_no:
            self.offer(order)

    def fire(self) -> None:
        from router.protocol import MsgClass
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, order, step, n = heapq.heappop(self.timers)
            if order not in self.parties:
                continue
            u, m, r = self.parties[order]
            if step == OFFER:
                if self.offer_no.get(order) == n:  # still unanswered: the next rider
                    self.tally.count("offer timeouts")
                    self.offer(order)
            elif step == PICKED_UP:
                self.send(f"user:{u}", PICKED_UP, order, MsgClass.ORDER, "order.picked_up")
            else:
                self.send(f"user:{u}", DELIVERED, order, MsgClass.ORDER, "order.delivered")
                self.send(f"merchant:{m}", DELIVERED, order, MsgClass.ORDER,
                          "order.delivered")
                del self.parties[order]
                self.tally.count("orders delivered")


def order_service(url: str, args: argparse.Namespace, ready, go, out) -> None:
    """``args.orders`` orders a second, each through its whole life."""
    from router.client import Endpoint

    tally = Tally()
    ep = Endpoint(url, ["svc:orders", "svc:dispatch"], name="city-orders", timeout=60,
                  on_receipt=tally.on_receipt)
    svc = Orders(ep, args, tally)
    ready.set()
    t_go = go.get()
    tally.start(t_go, args.seconds)
    cpu0, t0 = time.process_time(), time.monotonic()
    end = t0 + args.seconds
    while (now := time.monotonic()) < end:
        due = int((now - t0) * args.orders) - (svc.next_id - 1)
        for _ in range(max(0, min(due, 1000))):
            svc.create()
        for d in ep.recv_many(2000, 0.002):
            _, order, step, _, _, rider = tally.took(d)
            ep.ack(d)
            svc.on(step, order, rider)
        svc.fire()
        ep.poll(0)
    tally.count("orders placed", svc.next_id - 1)
    # Orders under way finish: their last timers run out, then everything settles.
    finish = time.monotonic() + FINISH_S
    while svc.parties and time.monotonic() < finish:
        for d in ep.recv_many(2000, 0.01):
            _, order, step, _, _, rider = tally.took(d)
            ep.ack(d)
            svc.on(step, order, rider)
        svc.fire()
        ep.poll(0)
    tally.count("orders unfinished", len(svc.parties))
    settle(ep, tally, time.monotonic() + args.settle)
    out.put(tally.result("order service", cpu0, ep))
    ep.close()


def positions(url: str, args: argparse.Namespace, ready, go, out) -> None:
    """``args.locations`` rider positions a second, each to the rider's user."""
    from router.client import Sender
    from router.protocol import MsgClass

    tally = Tally()
    s = Sender(url, "city-positions", timeout=60, keep_receipts=1000)
    ready.set()
    go.get()
    cpu0, t0 = time.process_time(), time.monotonic()
    end, sent = t0 + args.seconds, 0
    while (now := time.monotonic()) < end:
        due = min(int((now - t0) * args.locations) - sent, 2000)
        for i in range(sent, sent + max(due, 0)):
            r = i % args.riders
            s.send(f"user:{r % args.users}", pack(POSITION, 0, 0, 0, r), kind="rider.location",
                   msg_class=MsgClass.LOCATION, key=f"rider:{r}")
        sent += max(due, 0)
        s.poll(0.001 if due <= 0 else 0)
    tally.count("positions sent", sent)
    s.flush(10)
    out.put(tally.result("positions", cpu0, s))
    s.close()


# ---------------------------------------------------------------------------- the run

def pct(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))] / 1000


def report(args, results: list[dict], router_cpu: float, router_rss: float,
           bind_s: float) -> tuple[str, bool]:
    env = environment()
    lat = {c: [x for r in results for x in r["lat"][c]] for c in CLASSES}
    sent = sum(r["reliable_out"] for r in results)
    got = sum(r["reliable_in"] for r in results)
    delivered = sum(r["delivered"] for r in results)
    failed = sum(r["failed"] for r in results)
    extra: dict[str, int] = {}
    for r in results:
        for k, v in r["extra"].items():
            extra[k] = extra.get(k, 0) + v
    ok = got == sent == delivered and failed == 0
    lines = [
        f"### City lunch peak, {time.strftime('%Y-%m-%d %H:%M')}", "",
        f"Machine: {env['cpu']}, {env['cores']} cores, Linux {env['kernel']}; Python "
        f"{env['python']}, pyzmq {env['pyzmq']} (libzmq {env['libzmq']}); commit "
        f"{env['commit']}. Router with journal and fsync on; {args.hubs} phone hubs "
        f"(GATEWAY role) binding {args.users:,} users, {args.riders:,} riders and "
        f"{args.merchants:,} merchants (every client connected in {bind_s:.1f} s); offered {args.orders:,} "
        f"orders/s and {args.locations:,} LOCATION/s for {args.seconds:.0f} s (latency from "
        f"{WARMUP_S:.0f} s on). All processes on these 2 cores.", "",
        "| class | received after warm-up | p50 ms | p99 ms | p99.9 ms | max ms |",
        "|---|---|---|---|---|---|"]
    for c in CLASSES:
        v = lat[c]
        lines.append(f"| {c} | {len(v):,} | {pct(v, .5):.1f} | {pct(v, .99):.1f} | "
                     f"{pct(v, .999):.1f} | {pct(v, 1):.1f} |")
    lines += ["", "| process | CPU s (cores over the run) | RSS MiB (peak) |", "|---|---|---|",
              f"| router | {router_cpu:.1f} ({router_cpu / args.seconds:.2f}) | "
              f"{router_rss:.0f} |"]
    for r in results:
        lines.append(f"| {r['role']} | {r['cpu_s']:.1f} ({r['cpu_s'] / args.seconds:.2f}) | "
                     f"{r['rss_mib']:.0f} ({r['peak_mib']:.0f}) |")
    lines += ["", f"Reliable: {sent:,} sent, {got:,} received, {delivered:,} DELIVERED "
              f"receipts, {failed} expired/refused/failed; duplicates dropped by the SDK: "
              f"{sum(r['duplicates'] for r in results)}. "
              + ", ".join(f"{k}: {v:,}" for k, v in sorted(extra.items()))
              + f". **{'Nothing reliable lost.' if ok else 'RELIABLE MESSAGES MISSING.'}**"]
    return "\n".join(lines) + "\n", ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks city", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--riders", type=int, default=45_000)
    ap.add_argument("--merchants", type=int, default=5_000)
    ap.add_argument("--hubs", type=int, default=2, help="phone hub processes")
    ap.add_argument("--orders", type=float, default=1500, help="new orders a second")
    ap.add_argument("--locations", type=float, default=25_000, help="positions a second")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--settle", type=float, default=30.0,
                    help="seconds the clients wait at most for the last receipts")
    ap.add_argument("--markdown", help="append the report to this file")
    args = ap.parse_args(argv)
    if min(args.users, args.riders, args.merchants, args.hubs) < 1:
        ap.error("--users, --riders, --merchants and --hubs must be >= 1")
    work = tempfile.mkdtemp(prefix="city-bench-")
    port, mport = free_port(), free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = open(os.path.join(work, "router.log"), "w")
    router = subprocess.Popen(
        [sys.executable, "-m", "router", "serve", "--bind", url, "--metrics-port", str(mport),
         "--data-dir",
         os.path.join(work, "data"), "--max-addresses", str(4 * (args.users + args.riders
                                                                  + args.merchants))],
        stdout=log, stderr=subprocess.STDOUT)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = []
    try:
        _wait_listening(port, router)
        roles = [(hub, (i,)) for i in range(args.hubs)] + [(order_service, ()),
                                                         (positions, ())]
        readies, gos = [], []
        t_bind = time.monotonic()
        for fn, extra in roles:
            ready, go = ctx.Event(), ctx.Queue()
            p = ctx.Process(target=fn, args=(url, *extra, args, ready, go, out), daemon=True)
            p.start()
            procs.append(p)
            readies.append(ready)
            gos.append(go)
        for e in readies:
            if not e.wait(300):
                raise RuntimeError(f"a client did not connect within 300 s; see {work}")
        bind_s = time.monotonic() - t_bind
        cpu0 = _cpu_s(router.pid)
        t_go = time.time()
        for g in gos:
            g.put(t_go)
        results = [out.get(timeout=args.seconds + FINISH_S + args.settle + 120)
                   for _ in procs]
        router_cpu = _cpu_s(router.pid) - cpu0
        text, ok = report(args, results, router_cpu, rss_mib(router.pid), bind_s)
        text = text.rstrip("\n") + "\n\n" + router_counters(mport)
        if not ok:
            text += f"\n\nThe router's log and journal are kept in {work}."
        print(text)
        if args.markdown:
            with open(args.markdown, "a") as f:
                f.write(text + "\n")
        return 0 if ok else 1
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
        router.terminate()
        router.wait(10)


#: The router's counters that explain a reliable message without its final receipt.
COUNTERS = ("router_receipts_dropped_total", "router_redeliveries_total",
            "router_dedup_hits_total", "router_errors_total")


def router_counters(mport: int) -> str:
    """One line: the router's own counts of dropped receipts, redeliveries, duplicates
    and errors (summed over labels), from its /metrics at the end of the run."""
    from urllib.request import urlopen
    try:
        text = urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
    except OSError as exc:
        return f"The router's counters: not read ({exc})."
    sums = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in sums:
            sums[name] += float(line.rsplit(" ", 1)[1])
    return "The router's counters: " + ", ".join(
        f"{k.removeprefix('router_').removesuffix('_total')} {v:,.0f}" for k, v in sums.items()) + "."


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    from benchmarks.harness.procs import listening
    deadline = time.monotonic() + timeout
    while not listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the router did not start listening")
        time.sleep(0.05)


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    sys.exit(main())
