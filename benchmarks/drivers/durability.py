"""The durability benchmark's driver program: a sender that records per-message receipt
times, and a receiver that can say HELLO only at "go" (to time a backlog's resume).

    python -m benchmarks.drivers.durability sender   CONFIG.json
    python -m benchmarks.drivers.durability receiver CONFIG.json

Same protocol with the orchestrator as benchmarks/drivers/hop.py (JSON lines out, words
in: benchmarks/harness/driver_protocol.py), same native loops.
"""

from __future__ import annotations

import sys
import time

import zmq

from benchmarks.drivers.build import import_loadgen
from benchmarks.drivers.sockets import (handshake, heartbeat_s, make_socket,
                                        receiver_options, write_latencies)
from benchmarks.harness.driver_protocol import driver_main, emit, poll_word, wait_word
from benchmarks.proto import protocol as P

loadgen = import_loadgen()


class _Heartbeat:
    """HEARTBEAT every half interval while this driver drains outside the native loop."""

    def __init__(self, sock: zmq.Socket, interval_s: float) -> None:
        self.sock = sock
        self.interval_s = interval_s
        self.last_out = time.monotonic()

    def tick(self) -> None:
        """Send a HEARTBEAT if half an interval passed since the last one."""
        if self.interval_s and time.monotonic() - self.last_out >= self.interval_s / 2:
            self.sock.send(P.prefix(P.Command.HEARTBEAT))
            self.last_out = time.monotonic()


def _write_receipt_times(res: dict, prefix: str | None) -> None:
    """Move the per-message arrays out of the result, to ``prefix``.SUFFIX.bin files."""
    for key, suffix in (("t_send_ns", "send"), ("t_accepted_ns", "accepted"),
                        ("t_terminal_ns", "terminal"), ("terminal_status", "status")):
        arr = res.pop(key, None)
        if arr is not None and prefix:
            with open(f"{prefix}.{suffix}.bin", "wb") as fh:
                arr.tofile(fh)


def _hold(sock: zmq.Socket, cfg: dict, res: dict, count: int, hb: float) -> None:
    """After the loop: report "sent", then drain receipts until all ``count`` are
    DELIVERED or "close" comes (with ``wait_close``, until "close" in any case)."""
    emit("sent", sent=res["sent"], confirmed=res.get("confirmed"), cpu_s=res["cpu_s"],
         receipts=res.get("receipts"), last_accepted_ns=res.get("last_accepted_ns"))
    delivered = (res.get("receipts") or {}).get("DELIVERED", 0)
    extra: dict = {}
    t_all = 0
    beat = _Heartbeat(sock, hb)
    deadline = time.monotonic() + float(cfg.get("hold_deadline", 300))
    word = None
    while time.monotonic() < deadline:
        got = loadgen.drain_inbox(sock, 0.02)
        for k, v in got["receipts"].items():
            extra[k] = extra.get(k, 0) + v
        d = got["receipts"].get("DELIVERED", 0)
        if d:
            delivered += d
            if delivered >= count and not t_all:
                t_all = got["last_terminal_ns"]
        beat.tick()
        word = poll_word()
        if word or t_all:
            break
    res["hold_receipts"] = extra
    res["t_delivered_all_ns"] = t_all
    res["hold_end"] = word or ("delivered" if t_all else "deadline")
    if t_all and cfg.get("wait_close"):
        while not word and time.monotonic() < deadline:
            loadgen.drain_inbox(sock, 0.05)
            beat.tick()
            word = poll_word()


def run_sender(cfg: dict) -> None:
    """HELLO as SENDER, then ``count`` SENDs to ``target``; per-message receipt times go
    to ``out_prefix``.{send,accepted,terminal}.bin (int64 ns) and .status.bin (uint8).

    wait: "delivered" (every message has a terminal receipt), "accepted" (every message
    has a receipt) or "none". hold: after the loop, print {"event": "sent"} and keep
    draining receipts (with heartbeats) until ``count`` DELIVERED receipts came or
    "close" arrives on stdin; the result then has ``t_delivered_all_ns``.
    """
    ctx = zmq.Context()
    sock = make_socket(ctx, cfg)
    welcome = handshake(sock, P.encode_hello(P.Role.SENDER, cfg.get("name", "bench-sender")),
                        float(cfg.get("connect_timeout", 30)))
    msg_class = P.MsgClass(int(cfg.get("msg_class", P.MsgClass.ORDER)))
    header = P.encode_send(cfg["target"], 0, msg_class, kind=cfg.get("kind", ""))
    pre = loadgen.drain_inbox(sock, 0.05)
    emit("ready", welcome=welcome, pre=pre)
    wait_word(float(cfg.get("go_timeout", 120)))
    count = int(cfg["count"])
    reliable = msg_class <= P.MsgClass.CHAT
    wait = cfg.get("wait", "delivered") if reliable else "none"
    hb = heartbeat_s(welcome)
    cpu0 = time.process_time()
    res = loadgen.run_sender(
        sock, [header], count,
        payload_size=int(cfg.get("payload", 200)),
        rate=float(cfg.get("rate", 0)),
        first_id=int(cfg.get("first_id", 1)),
        window=int(cfg.get("window", 0)) if reliable else 0,
        window_confirmed=reliable and cfg.get("window_on", "accepted") == "accepted",
        wait_terminal=wait == "delivered",
        wait_confirmed=wait == "accepted",
        track_receipts=reliable,
        deadline_s=float(cfg.get("deadline", 120)),
        heartbeat_s=hb,
    )
    res["cpu_s"] = time.process_time() - cpu0
    _write_receipt_times(res, cfg.get("out_prefix"))
    if cfg.get("hold"):
        _hold(sock, cfg, res, count, hb)
    sock.close(linger=int(cfg.get("close_linger_ms", 2000)))
    ctx.term()
    res["pre"] = pre
    emit("result", **res)


def run_receiver(cfg: dict) -> None:
    """ENDPOINT (or GATEWAY) receiver; with ``hello_on_go`` it connects without HELLO
    and sends HELLO (cursor ``cursor`` for each address) at "go", so the measured time
    starts at the HELLO. Results carry t_hello_ns and t_done_ns (after the final acks)."""
    ctx = zmq.Context()
    cfg.setdefault("linger_ms", 1000)
    sock = make_socket(ctx, cfg)
    role = P.Role[cfg.get("role", "ENDPOINT")]
    addresses = cfg.get("addresses", ["user:1"])
    hello = P.encode_hello(role, cfg.get("name", "bench-endpoint"),
                           [(a, int(cfg.get("cursor", 0))) for a in addresses])
    welcome = None
    if not cfg.get("hello_on_go"):
        welcome = handshake(sock, hello, float(cfg.get("connect_timeout", 30)))
        hb = heartbeat_s(welcome)
    else:
        hb = float(cfg.get("heartbeat_ms", 1000)) / 1000.0
    emit("ready", welcome=welcome)
    wait_word(float(cfg.get("go_timeout", 300)))
    count = int(cfg["count"])
    lat_file = cfg.get("lat_file")
    cpu0 = time.process_time()
    t_hello = time.monotonic_ns()
    if cfg.get("hello_on_go"):
        sock.send(hello)
    res = loadgen.run_receiver(sock, count, **receiver_options(
        cfg, count, len(addresses), hb, reliable=True, deadline=120.0))
    t_done = time.monotonic_ns()
    res["cpu_s"] = time.process_time() - cpu0
    res["t_hello_ns"] = t_hello
    res["t_done_ns"] = t_done
    write_latencies(res, lat_file)
    sock.close()
    ctx.term()
    emit("result", **res)


if __name__ == "__main__":
    sys.exit(driver_main({"sender": run_sender, "receiver": run_receiver}, __doc__))
