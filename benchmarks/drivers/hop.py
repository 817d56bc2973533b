"""The hop benchmark's driver program: sender and receiver around the native loops.

    python -m benchmarks.drivers.hop sender   CONFIG.json
    python -m benchmarks.drivers.hop receiver CONFIG.json

The orchestrator (``benchmarks.hop``) starts one process per driver. Each one connects,
does the protocol handshake if the hop speaks it (HELLO, wait for WELCOME; the sender
then sends its JOINs), prints ``{"event": "ready", ...}`` as one JSON line, waits for
``go`` on stdin, runs its native loop with the GIL released, and prints ``{"event":
"result", ...}``. Anything that goes wrong is printed as ``{"event": "error", "error":
...}`` (benchmarks/harness/driver_protocol.py).

Sender config: endpoint, hello (null for the bare proxy, else {"name"}), joins
([[channel, [addresses]]]), targets, channel (bool: targets are channels), msg_class,
count, rate, payload, window, wait_terminal, deadline, connect_timeout, hwm, first_id,
hold (print {"event": "sent"} and keep the connection open until "close" on stdin),
pack (messages per PACK frame; 0 or 1: none).

Receiver config: endpoint, hello (null, or {"role": "ENDPOINT"|"GATEWAY", "name",
"addresses"}) or hellos (a list of those: one connection each, all served by this
process), count, reliable, deadline, idle, ack_interval, lat_file (raw latencies as
int64 ns are written there), index_space, connect_timeout, hwm, pack (ask the router
for packed DELIVERs).
"""

from __future__ import annotations

import sys
import time

import zmq

from benchmarks.drivers.build import import_loadgen
from benchmarks.drivers.sockets import (handshake, heartbeat_s, make_socket,
                                        receiver_options, write_latencies)
from benchmarks.harness.driver_protocol import driver_main, emit, wait_word
from benchmarks.proto import protocol as P

loadgen = import_loadgen()


def run_sender(cfg: dict) -> None:
    """Connect, HELLO and JOIN, then send ``count`` messages over ``targets``."""
    ctx = zmq.Context()
    sock = make_socket(ctx, cfg)
    welcome = None
    hello = cfg.get("hello")
    if hello is not None:
        welcome = handshake(
            sock, P.encode_hello(P.Role.SENDER, hello.get("name", "bench-sender")),
            float(cfg.get("connect_timeout", 30)),
        )
    for channel, members in cfg.get("joins", []):
        sock.send(P.encode_join(channel, members))
    msg_class = P.MsgClass(int(cfg.get("msg_class", P.MsgClass.NOTICE)))
    flags = P.Flag.CHANNEL if cfg.get("channel") else P.Flag.NONE
    headers = [P.encode_send(t, 0, msg_class, flags=flags) for t in cfg["targets"]]
    # Anything the hop said after WELCOME/JOIN (an ERROR for a JOIN, say).
    pre = loadgen.drain_inbox(sock, float(cfg.get("settle", 0.05)))
    emit("ready", welcome=welcome, pre=pre, headers=len(headers))
    wait_word(float(cfg.get("go_timeout", 60)))
    cpu0 = time.process_time()
    res = loadgen.run_sender(
        sock,
        headers,
        int(cfg["count"]),
        payload_size=int(cfg.get("payload", 200)),
        rate=float(cfg.get("rate", 0)),
        first_id=int(cfg.get("first_id", 1)),
        drain=bool(cfg.get("drain", True)),
        window=int(cfg.get("window", 0)),
        wait_terminal=bool(cfg.get("wait_terminal", False)),
        deadline_s=float(cfg.get("deadline", 60)),
        heartbeat_s=heartbeat_s(welcome),
        pack=int(cfg.get("pack") or 0),
    )
    res["cpu_s"] = time.process_time() - cpu0
    if cfg.get("hold"):
        # Keep the connection until the orchestrator says the receivers are done, so the
        # hop never sees this sender leave while its messages are still queued.
        emit("sent", sent=res["sent"])
        wait_word(float(cfg.get("deadline", 60)) + 60, word="close")
    # Closing flushes what libzmq still queues (bounded by linger).
    t = time.monotonic()
    sock.close()
    ctx.term()
    res["close_s"] = time.monotonic() - t
    res["pre"] = pre
    emit("result", **res)


def run_receiver(cfg: dict) -> None:
    """Receive on one connection, or on several from this one process: ``hellos`` lists
    one HELLO per connection (gateways), ``hello`` is the single-connection form."""
    ctx = zmq.Context()
    cfg.setdefault("linger_ms", 1000)
    hellos = cfg.get("hellos") or [cfg.get("hello")]
    socks, welcome = [], None
    for hello in hellos:
        sock = make_socket(ctx, cfg)
        socks.append(sock)
        if hello is not None:
            role = P.Role[hello.get("role", "ENDPOINT")]
            cursors = [(a, 0) for a in hello.get("addresses", [])]
            flags = P.Flag.PACK if cfg.get("pack") else 0
            welcome = handshake(
                sock, P.encode_hello(role, hello.get("name", "bench-receiver"), cursors,
                                     flags),
                float(cfg.get("connect_timeout", 30)),
            )
    emit("ready", welcome=welcome)
    wait_word(float(cfg.get("go_timeout", 60)))
    count = int(cfg["count"])
    lat_file = cfg.get("lat_file")
    n_addresses = sum(len((h or {}).get("addresses", [])) for h in hellos)
    cpu0 = time.process_time()
    options = receiver_options(cfg, count, n_addresses, heartbeat_s(welcome))
    # through a bare proxy the sender's PACKs arrive as they were sent, as payload frames
    options["packed"] = bool(cfg.get("pack")) and all(h is None for h in hellos)
    res = loadgen.run_receiver(socks if len(socks) > 1 else socks[0], count, **options)
    res["cpu_s"] = time.process_time() - cpu0
    res["connections"] = len(socks)
    write_latencies(res, lat_file)
    for sock in socks:
        sock.close()
    ctx.term()
    emit("result", **res)


if __name__ == "__main__":
    sys.exit(driver_main({"sender": run_sender, "receiver": run_receiver}, __doc__))
